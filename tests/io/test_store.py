"""Tests of io/store.py, io/ingest.py, io/npz.py and io/row_blocks.py: reading token_acts.npz in place
or through the ingested store."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask.io import ingest, store
from probe_dask.errors import InputError
from probe_dask.io.store import open_csr, store_dir
from probe_dask.testing.memory import TreeSampler

# ----------------------------------------------------------------------------- helpers


def write_npz(path, members, compressed=True):
    """Write a zip of .npy members by hand: arrays, or (dtype, n, chunk iterator) streams."""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    level = 1 if compressed else None
    with zipfile.ZipFile(path, "w", method, allowZip64=True, compresslevel=level) as zf:
        for name, value in members.items():
            with zf.open(name, "w", force_zip64=True) as f:
                if isinstance(value, tuple):  # streamed: the test never holds the array
                    dtype, n, chunks = value
                    np.lib.format.write_array_header_2_0(
                        f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                            "fortran_order": False, "shape": (n,)})
                    for c in chunks:
                        f.write(np.ascontiguousarray(c, dtype=dtype))
                else:
                    np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
    return str(path)


def csr_members(m, index_dtype=None, **override):
    """The members save_npz writes for ``m``, with optional dtype change / overrides."""
    members = {"indices.npy": m.indices, "indptr.npy": m.indptr, "format.npy": np.array(b"csr"),
               "shape.npy": np.array(m.shape), "data.npy": m.data}
    if index_dtype is not None:
        members["indices.npy"] = m.indices.astype(index_dtype)
        members["indptr.npy"] = m.indptr.astype(index_dtype)
    members.update(override)
    return {k: v for k, v in members.items() if v is not None}


def sample_csr(n_rows=500, n_cols=300, seed=0):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 20, n_rows)
    counts[[0, 7, 8, 9, n_rows - 1]] = 0  # empty rows at the ends and in a run
    counts[100] = 250  # one wide row
    counts[[42, 50, 123, 199, 300]] += 2  # rows the validation tests spoil
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = np.concatenate([np.sort(rng.choice(n_cols, c, replace=False)) for c in counts])
    data = rng.lognormal(size=indptr[-1]).astype(np.float32)
    return sp.csr_matrix((data, indices.astype(np.int32), indptr.astype(np.int32)),
                         shape=(n_rows, n_cols))


def assert_same(a, b):
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)


@pytest.fixture
def mat():
    return sample_csr()


KINDS = ["compressed", "uncompressed", "int64-compressed", "int64-uncompressed"]


def make_file(tmp_path, m, kind):
    d = tmp_path / kind
    d.mkdir(exist_ok=True)
    path = d / "token_acts.npz"
    if kind.startswith("int64"):
        write_npz(path, csr_members(m, np.int64), compressed=kind == "int64-compressed")
    else:
        sp.save_npz(path, m, compressed=kind == "compressed")
    return str(path)


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_bytes", [64, store.DEFAULT_CHUNK_BYTES])
def test_round_trip_matches_scipy(tmp_path, mat, kind, chunk_bytes):
    path = make_file(tmp_path, mat, kind)
    ref = sp.load_npz(path)
    if kind.startswith("int64"):
        with np.load(path) as z:  # really an int64 file (scipy downcasts on load)
            assert z["indices"].dtype == z["indptr"].dtype == np.int64
    src = open_csr(path, chunk_bytes=chunk_bytes)
    assert src.kind == ("inplace" if "uncompressed" in kind else "store")
    assert src.shape == mat.shape and src.nnz == mat.nnz
    whole = src.read_rows(0, src.n_rows)
    assert whole.dtype == np.float32 and whole.indices.dtype == np.int32
    assert_same(whole, ref)
    for r0, r1 in [(0, 1), (7, 10), (99, 102), (250, 500), (499, 500), (3, 3)]:
        block = src.read_rows(r0, r1)
        assert block.indptr[0] == 0
        assert_same(block, ref[r0:r1])
        np.testing.assert_array_equal(src.read_indptr(r0, r1), ref.indptr[r0:r1 + 1])


def test_store_layout_and_manifest(tmp_path, mat):
    path = make_file(tmp_path, mat, "compressed")
    src = open_csr(path)
    sdir = os.path.join(os.path.dirname(path), ".probe-dask-store")
    assert src.store_dir == sdir == store_dir(path)
    assert sorted(os.listdir(sdir)) == ["data.f32", "indices.i32", "indptr.i64", "store.json"]
    man = json.load(open(os.path.join(sdir, "store.json")))
    st = os.stat(path)
    assert man["source"] == {"path": os.path.abspath(path), "size": st.st_size,
                             "mtime_ns": st.st_mtime_ns}
    assert man["source"] == src.identity
    assert man["shape"] == list(mat.shape) and man["nnz"] == mat.nnz
    assert man["validation"]["ok"] is True
    np.testing.assert_array_equal(np.fromfile(os.path.join(sdir, "indptr.i64"), "<i8"), mat.indptr)
    assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp-" in n or ".old-" in n]


def test_cache_dir_location(tmp_path, mat):
    path = make_file(tmp_path, mat, "compressed")
    cache = tmp_path / "cache"
    src = open_csr(path, cache_dir=cache)
    assert os.path.dirname(src.store_dir) == str(cache)
    assert os.path.exists(os.path.join(src.store_dir, "store.json"))
    assert not os.path.exists(os.path.join(os.path.dirname(path), ".probe-dask-store"))


def test_source_is_small_and_picklable(tmp_path, mat):
    src = open_csr(make_file(tmp_path, mat, "compressed"))
    blob = pickle.dumps(src)
    assert len(blob) < 2000
    again = pickle.loads(blob)
    assert again == src
    assert_same(again.read_rows(10, 60), mat[10:60])


def test_read_rows_range_checked(tmp_path, mat):
    src = open_csr(make_file(tmp_path, mat, "uncompressed"))
    for r0, r1 in [(-1, 3), (5, 4), (0, 501)]:
        with pytest.raises(ValueError):
            src.read_rows(r0, r1)


def test_reads_do_not_memory_map(tmp_path, mat, monkeypatch):
    src = open_csr(make_file(tmp_path, mat, "uncompressed"))

    def no_memmap(*a, **k):
        raise AssertionError("np.memmap used")

    monkeypatch.setattr(np, "memmap", no_memmap)
    src.read_rows(0, 500)
    src.row_blocks(100)


# ----------------------------------------------------------------------------- row blocks


@pytest.mark.parametrize("target", [1, 50, 300, 1000, 10**9])
def test_row_blocks_cover_and_balance(tmp_path, mat, target):
    src = open_csr(make_file(tmp_path, mat, "compressed"), chunk_bytes=256)  # indptr scanned in chunks
    blocks = src.row_blocks(target)
    assert blocks[0][0] == 0 and blocks[-1][1] == mat.shape[0]
    assert all(r0 < r1 for r0, r1 in blocks)
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    sizes = np.array([mat.indptr[r1] - mat.indptr[r0] for r0, r1 in blocks])
    widest = np.diff(mat.indptr).max()
    assert sizes.sum() == mat.nnz
    assert sizes.max() <= max(target, 0) + widest
    assert len(blocks) >= min(-(-mat.nnz // target), mat.shape[0] - 5) * 0.5 or target < widest
    if target >= widest and len(blocks) > 2:
        assert sizes.max() - sizes.min() <= 2 * widest  # balanced up to a row or two


def test_row_blocks_zero_nnz_and_max_rows(tmp_path):
    m = sp.csr_matrix((1000, 20), dtype=np.float32)
    src = open_csr(make_file(tmp_path, m, "compressed"))
    assert src.nnz == 0 and src.row_blocks(100) == [(0, 1000)]
    blocks = src.row_blocks(100, max_rows=300)
    assert blocks[0][0] == 0 and blocks[-1][1] == 1000 and max(r1 - r0 for r0, r1 in blocks) <= 300
    assert src.read_rows(0, 1000).nnz == 0


def test_row_blocks_rejects_bad_target(tmp_path, mat):
    src = open_csr(make_file(tmp_path, mat, "uncompressed"))
    with pytest.raises(ValueError):
        src.row_blocks(0)


# ----------------------------------------------------------------------------- caching


def test_store_reused_while_source_unchanged(tmp_path, mat, monkeypatch):
    path = make_file(tmp_path, mat, "compressed")
    first = open_csr(path)
    monkeypatch.setattr(ingest, "validate", lambda *a, **k: pytest.fail("ingested again"))
    assert open_csr(path) == first


def test_uncompressed_validation_cached(tmp_path, mat, monkeypatch):
    path = make_file(tmp_path, mat, "uncompressed")
    open_csr(path)
    man = json.load(open(os.path.join(store_dir(path), "store.json")))
    assert man["kind"] == "inplace" and man["validation"]["ok"] is True
    monkeypatch.setattr(ingest, "validate", lambda *a, **k: pytest.fail("validated again"))
    assert_same(open_csr(path).read_rows(0, 500), mat)


def test_stale_store_reingested_after_rewrite(tmp_path, mat):
    path = make_file(tmp_path, mat, "compressed")
    open_csr(path)
    other = sample_csr(n_rows=400, seed=5)
    sp.save_npz(path, other)
    src = open_csr(path)
    assert src.shape == other.shape
    assert_same(src.read_rows(0, 400), other)


def test_stale_store_reingested_after_touch(tmp_path, mat, monkeypatch):
    path = make_file(tmp_path, mat, "compressed")
    before = open_csr(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    real = ingest.validate
    monkeypatch.setattr(ingest, "validate", lambda *a, **k: calls.append(1) or real(*a, **k))
    after = open_csr(path)
    assert calls and after.identity["mtime_ns"] == before.identity["mtime_ns"] + 10**9
    assert_same(after.read_rows(0, 500), mat)


def test_damaged_store_reingested(tmp_path, mat):
    path = make_file(tmp_path, mat, "compressed")
    src = open_csr(path)
    with open(src.data.file, "r+b") as f:
        f.truncate(8)
    assert_same(open_csr(path).read_rows(0, 500), mat)


# ----------------------------------------------------------------------------- validation


def _bad_cases(m):
    bad_ptr = m.indptr.copy()
    bad_ptr[200] = bad_ptr[199] - 1
    cols = m.indices.copy()
    cols[m.indptr[123] + 1] = m.shape[1]
    neg = m.indices.copy()
    neg[m.indptr[50]] = -3
    vals = m.data.copy()
    vals[m.indptr[42]] = np.nan
    vals[m.indptr[300]] = np.inf
    shifted = m.indptr.copy()
    shifted[0] = 1
    return {
        "members": ({"data.npy": None}, "missing data.npy"),
        "format.npy": ({"format.npy": np.array(b"csc")}, "csc"),
        "shape.npy": ({"shape.npy": np.array([500])}, "expected 2 ints"),
        "indptr.npy length": ({"indptr.npy": m.indptr[:-1]}, "found 500"),
        "indptr.npy[0]": ({"indptr.npy": shifted}, "found 1"),
        "indptr.npy": ({"indptr.npy": bad_ptr}, "row 199"),
        "indptr.npy[-1]": ({"indptr.npy": np.minimum(m.indptr, m.nnz - 1)}, f"nnz = {m.nnz}"),
        "indices.npy length": ({"indices.npy": m.indices[:-1]}, "data.npy has"),
        "indices.npy": ({"indices.npy": cols}, f"column index {m.shape[1]} in row 123"),
        "indices.npy ": ({"indices.npy": neg}, "column index -3 in row 50"),
        "data.npy": ({"data.npy": vals}, "2 non-finite values (NaN or inf), first in row 42"),
        "data.npy dtype": ({"data.npy": m.data.astype(np.int64)}, "int64"),
    }


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("field", list(_bad_cases(sample_csr())))
def test_validation_errors_name_file_and_field(tmp_path, mat, compressed, field):
    override, detail = _bad_cases(mat)[field]
    path = write_npz(tmp_path / "token_acts.npz", csr_members(mat, **override), compressed)
    for attempt in range(2):  # the second answer may come from the cached verdict
        with pytest.raises(InputError) as info:
            open_csr(path, chunk_bytes=64)  # tiny chunks: errors found across chunk edges
        msg = str(info.value)
        assert "\n" not in msg
        assert msg.startswith(f"{path}: {field.strip()}: found ")
        assert info.value.field == field.strip()
        assert detail in msg


@pytest.mark.parametrize("compressed", [True, False])
def test_cached_verdict_not_streamed_again(tmp_path, mat, compressed, monkeypatch):
    override, _ = _bad_cases(mat)["data.npy"]
    path = write_npz(tmp_path / "token_acts.npz", csr_members(mat, **override), compressed)
    with pytest.raises(InputError) as first:
        open_csr(path)
    assert not any(n.endswith((".f32", ".i32", ".i64")) for n in os.listdir(store_dir(path)))
    monkeypatch.setattr(ingest, "validate", lambda *a, **k: pytest.fail("streamed again"))
    with pytest.raises(InputError) as second:
        open_csr(path)
    assert str(first.value) == str(second.value)


def test_float64_values_that_overflow_float32_are_not_finite(tmp_path, mat):
    vals = mat.data.astype(np.float64)
    vals[mat.indptr[300]] = 1e300
    path = write_npz(tmp_path / "token_acts.npz", csr_members(mat, **{"data.npy": vals}))
    with pytest.raises(InputError, match="data.npy: found 1 non-finite values .*first in row 300"):
        open_csr(path)


def test_float64_values_and_sparse_array_files(tmp_path, mat):
    f64 = csr_members(mat, **{"data.npy": mat.data.astype(np.float64)})
    path = write_npz(tmp_path / "token_acts.npz", f64)
    assert_same(open_csr(path).read_rows(0, 500), mat)
    d = tmp_path / "array"
    d.mkdir()
    sp.save_npz(d / "token_acts.npz", sp.csr_array(mat))  # adds an _is_array.npy member
    assert_same(open_csr(d / "token_acts.npz").read_rows(0, 500), mat)


@pytest.mark.parametrize("compressed", [True, False])
def test_npy_format_3_header_is_refused(tmp_path, mat, compressed):
    path = tmp_path / "token_acts.npz"  # numpy writes 3.0 only when asked (utf-8 field names)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        for name, value in csr_members(mat).items():
            with zf.open(name, "w") as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False,
                                          version=(3, 0) if name == "indices.npy" else None)
    with pytest.raises(InputError, match=r"indices.npy header: found .npy format version 3.0"):
        open_csr(path)


def test_not_a_zip_and_truncated(tmp_path, mat):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip" * 100)
    good = make_file(tmp_path, mat, "compressed")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(open(good, "rb").read()[:-200])
    for p in (junk, cut):
        with pytest.raises(InputError,
                           match=r"zip archive: found not a zip archive \(truncated or corrupt\)"):
            open_csr(p)
    with pytest.raises(InputError, match="file: found no such file"):
        open_csr(tmp_path / "absent.npz")


def test_corrupt_deflate_stream(tmp_path, mat):
    path = make_file(tmp_path, mat, "compressed")
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("data.npy")
    raw = bytearray(open(path, "rb").read())
    mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    raw[mid:mid + 16] = bytes(16)
    open(path, "wb").write(bytes(raw))
    with pytest.raises(InputError, match="data.npy"):
        open_csr(path)


def test_empty_shard_is_an_error_but_rows_without_values_are_not(tmp_path):
    empty = sp.csr_matrix((0, 10), dtype=np.float32)
    with pytest.raises(InputError, match=r"shape.npy: found 0 rows \(empty shard\)"):
        open_csr(make_file(tmp_path, empty, "compressed"))
    zero = sp.csr_matrix((5, 10), dtype=np.float32)
    src = open_csr(make_file(tmp_path, zero, "uncompressed"))
    assert src.shape == (5, 10) and src.nnz == 0 and src.read_rows(0, 5).nnz == 0


def test_unwritable_store_location(tmp_path, mat):
    comp, raw = make_file(tmp_path, mat, "compressed"), make_file(tmp_path, mat, "uncompressed")
    blocker = tmp_path / "a-file"
    blocker.write_text("a cache_dir cannot be made under a file, even by root")
    with pytest.raises(InputError, match="cache_dir: found not writable"):
        open_csr(comp, cache_dir=blocker / "cache")
    assert_same(open_csr(raw, cache_dir=blocker / "cache").read_rows(0, 500), mat)  # nothing cached


# ----------------------------------------------------------------------------- big files

ROWS_PER_CHUNK, NNZ_PER_ROW, N_COLS = 20_000, 100, 16_384


def _chunk(k):
    rng = np.random.default_rng(k)
    n = ROWS_PER_CHUNK * NNZ_PER_ROW
    return rng.integers(0, N_COLS, n, dtype=np.int32), rng.random(n, dtype=np.float32)


def write_big_npz(path, n_chunks):
    """A compressed CSR npz written member by member; never more than one chunk in memory."""
    n_rows, nnz = n_chunks * ROWS_PER_CHUNK, n_chunks * ROWS_PER_CHUNK * NNZ_PER_ROW
    ptr = (np.arange(n_rows + 1, dtype=np.int64) * NNZ_PER_ROW).astype(np.int32)
    write_npz(path, {
        "indices.npy": ("<i4", nnz, (_chunk(k)[0] for k in range(n_chunks))),
        "indptr.npy": ptr, "format.npy": np.array(b"csr"), "shape.npy": np.array([n_rows, N_COLS]),
        "data.npy": ("<f4", nnz, (_chunk(k)[1] for k in range(n_chunks))),
    })
    return n_rows, nnz


# The child's own high-water mark: VmHWM of /proc/self/status. (ru_maxrss is inherited
# across fork+exec on Linux: a child of a 400 MiB pytest process would report 400 MiB.)
INGEST = textwrap.dedent("""
    import sys, time
    from probe_dask.io.store import open_csr
    t = time.perf_counter()
    src = open_csr(sys.argv[1], cache_dir=sys.argv[2])
    hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
    print(src.nnz, time.perf_counter() - t, hwm)
""")


@pytest.mark.slow
def test_ingest_400mb_compressed_peak_rss_under_300mb(tmp_path):
    n_chunks = 26  # 52e6 values: 208 MB indices + 208 MB data + 2 MB indptr
    path = str(tmp_path / "token_acts.npz")
    n_rows, nnz = write_big_npz(path, n_chunks)
    with zipfile.ZipFile(path) as zf:
        decompressed = sum(i.file_size for i in zf.infolist())
    assert decompressed >= 400e6
    proc = subprocess.Popen([sys.executable, "-c", INGEST, path, str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid, interval=0.02) as sampler:
        out, _ = proc.communicate()
    assert proc.returncode == 0
    got, seconds, maxrss = out.split()
    peak = max(sampler.driver_peak, int(maxrss))
    print(f"\ningest of {decompressed / 1e6:.0f} MB decompressed: peak RSS {peak / 2**20:.0f} MiB, "
          f"{float(seconds):.1f} s")
    assert int(got) == nnz
    assert peak < 300 * 2**20
    src = open_csr(path, cache_dir=tmp_path / "cache")
    k = n_chunks - 2
    cols, vals = _chunk(k)
    block = src.read_rows(k * ROWS_PER_CHUNK, (k + 1) * ROWS_PER_CHUNK)
    np.testing.assert_array_equal(block.indices, cols)
    np.testing.assert_array_equal(block.data, vals)


# ----------------------------------------------------------------------------- trusting the store


def test_manifest_shape_edited_means_ingest_again(tmp_path, mat, caplog):
    path = make_file(tmp_path, mat, "compressed")
    src = open_csr(path)
    manifest = os.path.join(src.store_dir, "store.json")
    m = json.load(open(manifest))
    m["shape"][1] = mat.shape[1] - 100  # columns past n_cols would segfault scipy's tocsc
    json.dump(m, open(manifest, "w"))
    with caplog.at_level("WARNING", logger="probe_dask.io.store"):
        again = open_csr(path)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith(f"{manifest}: shape 500 x 200")
    assert "shape.npy 500 x 300" in lines[0] and "ingesting again" in lines[0]
    assert again.shape == mat.shape
    assert json.load(open(manifest))["shape"] == list(mat.shape)
    assert_same(again.read_rows(0, 500), mat)


def test_store_file_of_wrong_size_is_named(tmp_path, mat, caplog):
    path = make_file(tmp_path, mat, "compressed")
    src = open_csr(path)
    with open(src.indices.file, "ab") as f:
        f.write(b"\0" * 4)
    with caplog.at_level("WARNING", logger="probe_dask.io.store"):
        assert_same(open_csr(path).read_rows(0, 500), mat)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{src.indices.file}: {4 * (mat.nnz + 1)} bytes, expected {4 * mat.nnz}")


def _spoil(file, item, value, dtype):
    with open(file, "r+b") as f:
        f.seek(item * np.dtype(dtype).itemsize)
        f.write(np.asarray(value, dtype).tobytes())


@pytest.mark.parametrize("array, value, says", [
    ("data", [np.nan] * 100, "found nan (100 non-finite values in rows 100:300)"),
    ("data", [np.inf], "found inf (1 non-finite values in rows 100:300)"),
    ("indices", [300], "found column index 300; expected 0 <= index < n_cols = 300"),
    ("indices", [-1], "found column index -1; expected 0 <= index < n_cols = 300"),
])
def test_bad_block_stops_the_read_naming_file_and_row(tmp_path, mat, array, value, says):
    path = make_file(tmp_path, mat, "compressed")
    src = open_csr(path)
    pos = int(mat.indptr[123]) + 1  # a value of row 123
    _spoil(getattr(src, array).file, pos, value, ingest.STORE_DTYPES[array])
    assert_same(src.read_rows(0, 100), mat[:100])  # other blocks read as before
    with pytest.raises(InputError) as info:
        src.read_rows(100, 300)
    msg = str(info.value)
    assert msg.startswith(f"{src.store_dir}/{ingest.STORE_FILES[array]}: row 123: {says}")
    assert f"remove {src.store_dir} to ingest {path} again" in msg and "\n" not in msg


def test_bad_offsets_in_the_store_stop_the_read(tmp_path, mat):
    path = make_file(tmp_path, mat, "compressed")
    src = open_csr(path)
    _spoil(src.indptr.file, 200, [10**12], "<i8")  # would read far past the arrays
    with pytest.raises(InputError, match=r"indptr\.i64: rows 100:300: found offsets 1000000000000 then \d+ at row 200"):
        src.read_rows(100, 300)
    _spoil(src.indptr.file, 200, [int(mat.indptr[200]) - 50], "<i8")  # decreasing
    with pytest.raises(InputError, match=r"indptr\.i64: rows 100:300: .*non-decreasing offsets"):
        src.read_rows(100, 300)


def test_uncompressed_npz_changed_in_place_names_the_npz(tmp_path, mat):
    path = make_file(tmp_path, mat, "uncompressed")
    src = open_csr(path)
    st = os.stat(path)
    with open(path, "r+b") as f:  # NaN over a value of row 42, size and mtime kept
        f.seek(src.data.offset + 4 * (int(mat.indptr[42]) + 1))
        f.write(np.float32(np.nan).tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(InputError) as info:
        open_csr(path).read_rows(0, 500)
    assert str(info.value).startswith(f"{path}: data.npy, row 42: found nan")


def test_input_error_survives_pickling():
    err = pickle.loads(pickle.dumps(InputError("/a/data.f32", "row 3", "nan", "finite values")))
    assert isinstance(err, InputError) and err.field == "row 3"
    assert str(err) == "/a/data.f32: row 3: found nan; expected finite values"

"""Bad input through the real command line: one error line, non-zero exit, nothing written.

Each case copies a small synthetic run (saev layout), spoils one thing, and runs
``probe-dask fit`` as a subprocess. A bad case must exit with status 2 within seconds
(validation happens before any cluster starts), print exactly one line on stderr that
names the file, what was found and what was expected, and leave no result, checkpoint or
half-written store behind. The allowed cases (a class only in test, a shard without any
non-zero, a store whose source changed) must run to the end and write correct results.

The cases run concurrently (a few subprocesses at a time) in one module fixture; each
test then checks its own case. The allowed cases run whole fits and are marked slow.
"""

import json
import os
import shutil
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from probe_dask.io.store import open_csr, store_dir
from probe_dask.testing.runner import assert_one_error_line, run_cli
from probe_dask.testing.synthetic import make_run

N_CLASSES, D_SAE, TOKENS = 8, 128, 64
PARALLEL = 3  # subprocesses at once: 2 cores, mostly import time


# ----------------------------------------------------------------------------- helpers


@dataclass
class Case:
    """A copy of the base run; paths of what a case spoils."""

    root: Path
    run: Path
    train: Path
    test: Path
    args: list

    @property
    def train_npz(self) -> Path:
        return self.run / "inference" / self.train.name / "token_acts.npz"

    @property
    def test_npz(self) -> Path:
        return self.run / "inference" / self.test.name / "token_acts.npz"


def write_npz(path, members, *, compressed=True, comment=b""):
    """A zip of .npy members, as scipy.sparse.save_npz writes it (members in its order)."""
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, value in members.items():
            with zf.open(name, "w") as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
        zf.comment = comment


def members_of(m, **override):
    members = {"indices.npy": m.indices, "indptr.npy": m.indptr, "format.npy": np.array(b"csr"),
               "shape.npy": np.array(m.shape), "data.npy": m.data}
    members.update(override)
    return {k: v for k, v in members.items() if v is not None}


def load(path) -> sp.csr_matrix:
    return sp.csr_matrix(sp.load_npz(path))


def rewrite(path, **override):
    """Rewrite a token_acts.npz from its own CSR with some members replaced or dropped."""
    write_npz(path, members_of(load(path), **override))


def edit_json(path, fn):
    meta = json.loads(Path(path).read_text())
    fn(meta)
    Path(path).write_text(json.dumps(meta))


def first_nonempty_rows(m, k):
    return np.flatnonzero(np.diff(m.indptr) > 0)[:k]


# ----------------------------------------------------------------------------- the cases
# Each bad case: (spoil(case) -> expectations dict). Expectations: "file" (the path the
# line must name), "has" (substrings the line must hold).


def truncated_npz(c):
    raw = c.train_npz.read_bytes()
    c.train_npz.write_bytes(raw[: len(raw) * 6 // 10])
    return {"file": c.train_npz, "has": ["zip archive", "truncated or corrupt"]}


def not_a_zip(c):  # np.save of a dense array where save_npz was expected
    dense = load(c.train_npz).toarray()
    with open(c.train_npz, "wb") as f:
        np.save(f, dense)
    return {"file": c.train_npz, "has": ["not a zip archive"]}


def corrupt_member(c):  # bytes flipped inside the deflated data.npy: CRC / zlib error
    with zipfile.ZipFile(c.train_npz) as zf:
        info = zf.getinfo("data.npy")
    raw = bytearray(c.train_npz.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) \
        + info.compress_size // 2  # past the .npy header: the header still reads
    for i in range(start, start + 32):
        raw[i] ^= 0x5A
    c.train_npz.write_bytes(bytes(raw))
    return {"file": c.train_npz, "has": ["data.npy", "corrupt"]}


def not_csr(c):
    rewrite(c.train_npz, **{"format.npy": np.array(b"csc")})
    return {"file": c.train_npz, "has": ["format.npy", "b'csc'", "b'csr'"]}


def missing_members(c):
    rewrite(c.test_npz, **{"indices.npy": None, "data.npy": None})
    return {"file": c.test_npz, "has": ["members", "missing indices.npy, data.npy"]}


def indptr_decreasing(c):
    m = load(c.train_npz)
    ptr = m.indptr.copy()
    r = int(first_nonempty_rows(m, 3)[2])  # row r is not empty: indptr[r + 1] > indptr[r]
    ptr[r + 1] = ptr[r] - 1
    rewrite(c.train_npz, **{"indptr.npy": ptr})
    return {"file": c.train_npz, "has": ["indptr.npy", f"indptr[{r + 1}] < indptr[{r}]",
                                         "non-decreasing"]}


def indptr_short_of_nnz(c):
    m = load(c.train_npz)
    ptr = m.indptr.copy()
    ptr[-1] += 5  # still non-decreasing, but past the end of data.npy
    rewrite(c.train_npz, **{"indptr.npy": ptr})
    return {"file": c.train_npz, "has": ["indptr.npy[-1]", f"found {m.nnz + 5}", f"nnz = {m.nnz}"]}


def column_out_of_range(c):
    m = load(c.train_npz)
    row = int(first_nonempty_rows(m, 40)[-1])
    idx = m.indices.copy()
    idx[m.indptr[row]] = D_SAE
    rewrite(c.train_npz, **{"indices.npy": idx})
    return {"file": c.train_npz, "has": [f"column index {D_SAE} in row {row}",
                                         f"0 <= index < n_cols = {D_SAE}"]}


def non_finite(c):
    m = load(c.test_npz)
    rows = first_nonempty_rows(m, 60)
    data = m.data.copy()
    data[m.indptr[rows[[17, 30, 44]]]] = np.nan
    data[m.indptr[rows[[25, 59]]]] = [np.inf, -np.inf]
    rewrite(c.test_npz, **{"data.npy": data})
    return {"file": c.test_npz, "has": ["5 non-finite values", f"first in row {rows[17]}",
                                        "finite values"]}


def data_not_float(c):
    m = load(c.train_npz)
    rewrite(c.train_npz, **{"data.npy": m.data.astype(np.int64)})
    return {"file": c.train_npz, "has": ["data.npy dtype", "int64", "floating-point"]}


def indices_short(c):
    m = load(c.train_npz)
    rewrite(c.train_npz, **{"indices.npy": m.indices[:-3]})
    return {"file": c.train_npz, "has": ["indices.npy length", str(m.nnz - 3), "length of data.npy"]}


def labels_wrong_size(c):
    p = c.train / "labels.bin"
    p.write_bytes(p.read_bytes() + b"\x00" * 10)
    n = p.stat().st_size - 10
    return {"file": p, "has": [f"found {n + 10} bytes", f"= {n} bytes", "n_examples"]}


def labels_missing(c):
    (c.test / "labels.bin").rename(c.test / "labels.bin.bak")
    return {"file": c.test / "labels.bin", "has": ["no such file", "labels.bin.bak"]}


def metadata_missing_n_examples(c):
    edit_json(c.train / "metadata.json", lambda m: m.pop("n_examples"))
    return {"file": c.train / "metadata.json", "has": ["n_examples: found missing",
                                                       "expected a positive int"]}


def metadata_not_json(c):
    p = c.test / "metadata.json"
    p.write_text(p.read_text()[:40])
    return {"file": p, "has": ["invalid JSON", "expected a JSON object"]}


def rows_not_examples_times_tokens(c):
    # metadata.json and labels.bin agree on 3 images; the activations hold 4.
    edit_json(c.test / "metadata.json", lambda m: m.update(n_examples=3))
    p = c.test / "labels.bin"
    p.write_bytes(p.read_bytes()[: 3 * TOKENS])
    return {"file": c.test_npz, "has": ["shape.npy (rows)", f"found {4 * TOKENS}",
                                        f"{3 * TOKENS} rows = n_examples 3 x content_tokens"]}


def latents_differ(c):
    m = load(c.test_npz)[:, :100]
    sp.save_npz(c.test_npz, sp.csr_matrix(m))
    return {"file": c.test_npz, "has": ["latents", "found 100", f"{D_SAE} latents",
                                        str(c.train_npz)]}


def empty_shard_rows(c):  # activations with no rows while metadata promises some
    sp.save_npz(c.train_npz, sp.csr_matrix((0, D_SAE), dtype=np.float32))
    return {"file": c.train_npz, "has": ["0 rows (empty shard)", "at least 1 row"]}


def empty_shard(c):  # a shard of no images at all: metadata, labels and activations agree
    edit_json(c.test / "metadata.json", lambda m: m.update(n_examples=0))
    (c.test / "labels.bin").write_bytes(b"")
    sp.save_npz(c.test_npz, sp.csr_matrix((0, D_SAE), dtype=np.float32))
    return {"file": c.test / "metadata.json", "has": ["n_examples: found 0",
                                                      "expected a positive int"]}


def shard_id_typo(c):
    typo = c.train.with_name(c.train.name[:-1] + ("x" if c.train.name[-1] != "x" else "y"))
    c.args[c.args.index("--train-shards") + 1] = str(typo)
    return {"file": typo, "has": ["no such folder", f"closest existing path: {c.train}"]}


def run_dir_typo(c):
    typo = c.root / "runn"
    c.args[c.args.index("--run") + 1] = str(typo)
    return {"file": typo, "has": ["run folder", "no such folder", f"closest existing path: {c.run}"]}


def npz_renamed(c):
    c.test_npz.rename(c.test_npz.with_name("token_acts (1).npz"))
    return {"file": c.test_npz, "has": ["no such file", "token_acts (1).npz"]}


def stale_verdict_same_size_and_mtime(c):
    """An uncompressed npz (read in place, validated once) replaced, same size and mtime.

    The cached validation verdict must not be trusted: size and mtime_ns alone do not
    tell (``cp -p``, ``rsync -t`` keep the mtime).
    """
    m = load(c.train_npz)
    sp.save_npz(c.train_npz, m, compressed=False)
    assert open_csr(c.train_npz).kind == "inplace"  # validated, verdict cached
    st = c.train_npz.stat()
    data = m.data.copy()
    row = int(first_nonempty_rows(m, 9)[8])
    data[m.indptr[row]] = np.nan
    sp.save_npz(c.train_npz, sp.csr_matrix((data, m.indices, m.indptr), shape=m.shape),
                compressed=False)
    os.utime(c.train_npz, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert c.train_npz.stat().st_size == st.st_size
    return {"file": c.train_npz, "has": ["1 non-finite values", f"first in row {row}"]}


BAD = {f.__name__: f for f in [
    truncated_npz, not_a_zip, corrupt_member, not_csr, missing_members, indptr_decreasing,
    indptr_short_of_nnz, column_out_of_range, non_finite, data_not_float, indices_short,
    labels_wrong_size, labels_missing, metadata_missing_n_examples, metadata_not_json,
    rows_not_examples_times_tokens, latents_differ, empty_shard_rows, empty_shard,
    shard_id_typo, run_dir_typo, npz_renamed, stale_verdict_same_size_and_mtime,
]}


# Allowed input: runs to the end. spoil(case) -> anything the check needs.


def class_only_in_test(c):
    p = c.test / "labels.bin"
    y = np.fromfile(p, np.uint8)
    y[5:17] = N_CLASSES  # a new class, 12 test rows, never in train
    y.tofile(p)
    return {"class": N_CLASSES, "rows": 12}


def fit_split_without_nonzeros(c):
    m = load(c.train_npz)
    sp.save_npz(c.train_npz, sp.csr_matrix(m.shape, dtype=np.float32))
    return {}


def eval_split_without_nonzeros(c):
    m = load(c.test_npz)
    sp.save_npz(c.test_npz, sp.csr_matrix(m.shape, dtype=np.float32))
    return {}


def stale_store_same_size_and_mtime(c):
    """A compressed npz, ingested once, then replaced by other values of the same file size
    and mtime: the run must re-ingest and fit the new values."""
    m = load(c.train_npz)
    write_npz(c.train_npz, members_of(m), comment=b"#" * 4000)
    old = open_csr(c.train_npz)
    assert old.kind == "store"
    st = c.train_npz.stat()
    new = m.copy()
    new.data = (new.data * 2.0 + 1.0).astype(np.float32)
    write_npz(c.train_npz, members_of(new))
    pad = st.st_size - c.train_npz.stat().st_size
    assert 0 < pad < 65535
    write_npz(c.train_npz, members_of(new), comment=b"#" * pad)
    os.utime(c.train_npz, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert c.train_npz.stat().st_size == st.st_size
    return {"new": new, "old_store": old}


GOOD = {f.__name__: f for f in [class_only_in_test, fit_split_without_nonzeros,
                                eval_split_without_nonzeros, stale_store_same_size_and_mtime]}


# ----------------------------------------------------------------------------- running


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("bad-input-base"), n_train_examples=8,
                    n_test_examples=4, tokens_per_example=TOKENS, d_sae=D_SAE,
                    n_classes=N_CLASSES, mean_nnz_per_row=32, seed=11, n_planted=4)


def new_case(base, dest) -> Case:
    shutil.copytree(base.root, dest)
    run = dest / "run"
    train, test = dest / "shards" / base.train_id, dest / "shards" / base.test_id
    args = ["fit", "--run", str(run), "--train-shards", str(train), "--test-shards", str(test),
            "--workers", "1", "--threads", "1", "--max-iter", "8"]
    return Case(dest, run, train, test, args)


def run_case(args):
    """Run the CLI on a case; return the finished process and its wall seconds."""
    r = run_cli(*args)
    return r, r.seconds


def listing(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def uses(name):
    """Mark a test as reading the result of case ``name`` (so the fixture runs it)."""
    def mark(fn):
        fn.case = name
        return fn
    return mark


def _selected(request, names):
    """Names of this module's cases that the session will run (all of them by default)."""
    want = set()
    for item in request.session.items:
        if getattr(item, "module", None) is not sys.modules[__name__]:
            continue
        spec = getattr(item, "callspec", None)
        name = spec.params.get("name") if spec else getattr(item.function, "case", None)
        if name in names:
            want.add(name)
    return sorted(want)


@pytest.fixture(scope="module")
def results(request, base, tmp_path_factory):
    """Spoil every selected case, then run the CLI on all of them, PARALLEL at a time."""
    top = tmp_path_factory.mktemp("bad-input-cases")
    table = {**BAD, **GOOD}
    cases = {}
    for name in _selected(request, table):
        c = new_case(base, top / name)
        expect = table[name](c)
        before = listing(c.root)
        cases[name] = (c, expect, before)
    with ThreadPoolExecutor(PARALLEL) as pool:
        runs = dict(zip(cases, pool.map(lambda n: run_case(cases[n][0].args), cases)))
    return {n: (*cases[n], *runs[n]) for n in cases}


def assert_nothing_written(c: Case, before: set):
    """No result, no checkpoint, no temporary file; a store, if any, is whole."""
    new = sorted(listing(c.root) - before)
    for rel in new:
        parts = Path(rel).parts
        assert ".probe-dask-store" in parts, f"{rel} was written by a failed run"
        assert ".tmp" not in rel, f"half-written {rel} left behind"
    for d in c.root.rglob(".probe-dask-store"):
        assert (d / "store.json").is_file(), f"{d} has no manifest"
    for p in c.root.rglob("*"):
        assert "probe1d" not in p.name, f"{p} exists after a failed run"


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_one_line_no_output(results, name):
    c, expect, before, r, seconds = results[name]
    print(f"{name}: exit {r.returncode} in {seconds:.1f} s\n  {r.stderr.strip()}")
    assert_one_error_line(r, str(expect["file"]), "found", "expected", *expect["has"])
    assert "dashboard" not in r.stderr and r.stdout == ""  # no cluster was started
    assert seconds < 60
    assert_nothing_written(c, before)


def _metrics(c: Case, shard: Path):
    with np.load(c.run / "inference" / shard.name / "probe1d_metrics.npz") as f:
        return {k: f[k] for k in f.files}


def _classes(c: Case):
    return json.loads((c.run / "inference" / c.train.name / "probe1d_classes.json").read_text())


def _check_written(c, r):
    assert r.returncode == 0, r.stderr[-3000:]
    for shard in (c.train, c.test):
        m = _metrics(c, shard)
        assert set(m) == {"loss", "weights", "biases", "tp", "fp", "tn", "fn", "converged"}
        assert all(np.isfinite(v).all() for v in m.values())
    assert not list(c.root.rglob(".probe1d_checkpoint*"))


@pytest.mark.slow  # a whole fit on a LocalCluster
@uses("class_only_in_test")
def test_class_only_in_test_gets_prior_only_probe(results):
    c, expect, _, r, seconds = results["class_only_in_test"]
    _check_written(c, r)
    k = expect["class"]
    row = _classes(c)["classes"][k]
    print(f"class only in test: {seconds:.1f} s; table row {row}")
    assert row["train_rows"] == 0 and row["test_rows"] == expect["rows"]
    assert "prior-only" in row["note"]
    assert f"class {k}: not in the train shard" in r.stderr
    train, test = _metrics(c, c.train), _metrics(c, c.test)
    assert train["weights"].shape == (D_SAE, N_CLASSES + 1)
    assert np.all(train["weights"][:, k] == 0)
    np.testing.assert_allclose(train["biases"][:, k], np.log(1e-8 / (1 - 1e-8)), rtol=1e-6)
    # never predicted positive: every test row of the class is a false negative
    assert np.all(test["tp"][:, k] == 0) and np.all(test["fn"][:, k] == expect["rows"])
    assert np.all(train["fn"][:, k] == 0) and np.all(train["tp"][:, k] == 0)


def _prior_logit(y, n_classes):
    pi = np.clip(np.bincount(y, minlength=n_classes) / y.size, 1e-8, 1 - 1e-8)
    return np.log(pi) - np.log1p(-pi), -(pi * np.log(pi) + (1 - pi) * np.log1p(-pi))


@pytest.mark.slow  # a whole fit on a LocalCluster
@uses("fit_split_without_nonzeros")
def test_train_without_nonzeros_every_pair_prior_only(results):
    c, _, _, r, seconds = results["fit_split_without_nonzeros"]
    _check_written(c, r)
    y = np.fromfile(c.train / "labels.bin", np.uint8)
    b0, ce = _prior_logit(y, N_CLASSES)
    m = _metrics(c, c.train)
    print(f"train without non-zeros: {seconds:.1f} s; {r.stdout.splitlines()[-7]}")
    assert np.all(m["weights"] == 0)
    np.testing.assert_allclose(m["biases"], np.broadcast_to(b0, m["biases"].shape), rtol=1e-6)
    np.testing.assert_allclose(m["loss"], np.broadcast_to(ce, m["loss"].shape), rtol=1e-5)
    assert "solver passes: 0" in r.stdout


@pytest.mark.slow  # a whole fit on a LocalCluster
@uses("eval_split_without_nonzeros")
def test_test_without_nonzeros_is_scored_at_the_intercept(results):
    c, _, _, r, seconds = results["eval_split_without_nonzeros"]
    _check_written(c, r)
    m = _metrics(c, c.test)
    y = np.fromfile(c.test / "labels.bin", np.uint8)
    b = m["biases"].astype(np.float64)
    # every test row is zero: the logit is b, the loss is that of a constant prediction
    pos = np.bincount(y, minlength=N_CLASSES)[None, :]
    want = (pos * np.logaddexp(0, -b) + (y.size - pos) * np.logaddexp(0, b)) / y.size
    print(f"test without non-zeros: {seconds:.1f} s")
    np.testing.assert_allclose(m["loss"], want, rtol=1e-5)
    assert np.all(m["tp"] + m["fn"] == pos) and np.all(m["tp"] + m["fp"] + m["tn"] + m["fn"] == y.size)


@pytest.mark.slow  # a whole fit on a LocalCluster
@uses("stale_store_same_size_and_mtime")
def test_stale_store_is_ingested_again(results):
    c, expect, _, r, seconds = results["stale_store_same_size_and_mtime"]
    _check_written(c, r)
    print(f"stale store, same size and mtime: {seconds:.1f} s")
    src = open_csr(c.train_npz)  # the store the run left (reused now: source unchanged)
    assert src.kind == "store" and src.store_dir == store_dir(c.train_npz)
    assert src.fingerprint != expect["old_store"].fingerprint
    got = src.read_rows(0, src.n_rows)
    new = expect["new"]
    np.testing.assert_array_equal(got.indptr, new.indptr)
    np.testing.assert_array_equal(got.indices, new.indices)
    np.testing.assert_array_equal(got.data, new.data)
    manifest = json.loads((Path(src.store_dir) / "store.json").read_text())
    assert manifest["fingerprint"] == src.fingerprint


def test_at_least_fifteen_distinct_bad_inputs():
    assert len(BAD) >= 15

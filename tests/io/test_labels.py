"""Tests of labels.py: metadata.json and labels.bin of a saev shard."""

import json
import os
import pickle

import numpy as np
import pytest

from probe_dask.errors import InputError
from probe_dask.io.labels import LabelsSource, ShardMetadata, open_labels, read_metadata

SAEV_FIELDS = {"family": "dinov2", "ckpt": "dinov2_vitb14_reg", "layers": [11], "cls_token": True,
               "d_model": 768, "max_tokens_per_shard": 1_000_000, "data": {"name": "ade20k"},
               "dataset": "ade20k", "pixel_agg": "majority", "dtype": "float32", "protocol": "2.1"}


def write_shard(d, n_examples=6, tokens=16, labels=None, **meta):
    os.makedirs(d, exist_ok=True)
    fields = dict(SAEV_FIELDS, n_examples=n_examples, content_tokens_per_example=tokens)
    fields.update(meta)
    with open(os.path.join(d, "metadata.json"), "w") as f:
        json.dump({k: v for k, v in fields.items() if v is not None}, f)
    if labels is None:
        n = n_examples * tokens if all(type(v) is int for v in (n_examples, tokens)) else 16
        labels = np.random.default_rng(0).integers(0, 151, max(n, 16)).astype(np.uint8)
        labels[5] = 150
    np.asarray(labels, np.uint8).tofile(os.path.join(d, "labels.bin"))
    return str(d), labels


def test_read_metadata_tolerates_saev_fields(tmp_path):
    d, _ = write_shard(tmp_path / "s", n_examples=6, tokens=16)
    meta = read_metadata(d)
    assert meta == ShardMetadata(6, 16, os.path.join(d, "metadata.json"))
    assert meta.n_rows == 96
    assert meta.extra["family"] == "dinov2" and meta.extra["layers"] == [11]


def test_read_metadata_without_optional_fields(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "metadata.json").write_text(json.dumps({"n_examples": 2, "content_tokens_per_example": 3}))
    assert read_metadata(d).n_rows == 6


@pytest.mark.parametrize("field,value", [
    ("n_examples", None), ("content_tokens_per_example", None), ("n_examples", 0),
    ("n_examples", -4), ("content_tokens_per_example", 256.0), ("n_examples", "12"),
    ("content_tokens_per_example", True),
])
def test_read_metadata_bad_required_field(tmp_path, field, value):
    d, _ = write_shard(tmp_path / "s", **{field: value})
    with pytest.raises(InputError) as info:
        read_metadata(d)
    msg = str(info.value)
    assert msg.startswith(os.path.join(d, "metadata.json") + f": {field}: found ")
    assert ("missing" if value is None else repr(value)) in msg
    assert msg.endswith("expected a positive int") and "\n" not in msg


@pytest.mark.parametrize("text,found", [("{not json", "invalid JSON"), ("[1, 2]", "a JSON list"),
                                        ("", "invalid JSON")])
def test_read_metadata_bad_json(tmp_path, text, found):
    (tmp_path / "metadata.json").write_text(text)
    with pytest.raises(InputError, match=f"metadata.json: JSON: found {found}"):
        read_metadata(tmp_path)


def test_read_metadata_missing_file(tmp_path):
    with pytest.raises(InputError, match="metadata.json: file: found no such file"):
        read_metadata(tmp_path)


def test_open_labels_reads_slices(tmp_path):
    d, labels = write_shard(tmp_path / "s")
    src = open_labels(d)
    assert isinstance(src, LabelsSource) and src.n_rows == labels.size == 96
    assert src.path == os.path.join(d, "labels.bin")
    np.testing.assert_array_equal(src.read(0, 96), labels)
    np.testing.assert_array_equal(src.read(17, 40), labels[17:40])
    assert src.read(3, 3).dtype == np.uint8 and src.read(3, 3).size == 0
    for r0, r1 in [(-1, 2), (5, 4), (0, 97)]:
        with pytest.raises(ValueError):
            src.read(r0, r1)


def test_open_labels_size_mismatch_names_both_numbers(tmp_path):
    d, _ = write_shard(tmp_path / "s", n_examples=6, tokens=16, labels=np.zeros(95))
    with pytest.raises(InputError) as info:
        open_labels(d)
    msg = str(info.value)
    assert msg.startswith(os.path.join(d, "labels.bin") + ": size: found 95 bytes")
    assert "6 * 16 = 96 bytes" in msg


def test_open_labels_missing_file(tmp_path):
    d, _ = write_shard(tmp_path / "s")
    os.remove(os.path.join(d, "labels.bin"))
    with pytest.raises(InputError, match="labels.bin: file: found no such file"):
        open_labels(d)


def test_class_counts_and_max_label(tmp_path):
    d, labels = write_shard(tmp_path / "s")
    src = open_labels(d)
    expected = np.bincount(labels)
    for chunk_rows in (7, 96, 1 << 25):
        got = src.class_counts(chunk_rows=chunk_rows)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)
    assert src.max_label() == 150 and src.max_label(chunk_rows=5) == 150
    padded = src.class_counts(200)
    assert padded.shape == (200,) and padded[151:].sum() == 0 and padded.sum() == 96
    with pytest.raises(InputError, match="labels: found label 150; expected labels < n_classes = 100"):
        src.class_counts(100)


def test_labels_source_is_picklable(tmp_path):
    d, labels = write_shard(tmp_path / "s")
    src = open_labels(d, read_metadata(d))
    again = pickle.loads(pickle.dumps(src))
    assert again == src
    np.testing.assert_array_equal(again.read(10, 20), labels[10:20])

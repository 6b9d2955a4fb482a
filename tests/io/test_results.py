"""Loading results back: the Dataset holds exactly the npz arrays, names and provenance.

Result files are written here with the writers the job uses (``io.outputs``) from random
arrays, so the loader is compared with an independent source: the arrays themselves.
"""

import json

import numpy as np
import pytest

import probe_dask
from probe_dask.errors import InputError
from probe_dask.io.ade20k import ADE20K_150, ADE20K_NAMES
from probe_dask.io.outputs import write_json, write_metrics_npz
from probe_dask.io.results import (check_class_names, load_class_table, load_results,
                                   read_class_names, store_class_names)


def _write(folder, n_latents, n_classes, seed=0, class_names=None):
    rng = np.random.default_rng(seed)
    arrays = {k: rng.random((n_latents, n_classes), dtype=np.float32)
              for k in ("loss", "weights", "biases", "tp", "fp", "tn", "fn")}
    arrays["weights"][0, 0] = np.float32(1e-38)  # a denormal-ish value survives as it is
    converged = rng.random((n_latents, n_classes)) < 0.7
    write_metrics_npz(folder / "probe1d_metrics.npz", converged=converged, **arrays)
    summary = {"version": "9.9", "command": "probe-dask fit --run R", "n_classes": n_classes,
               "kernel": {"c on cpu": 2}, "solver_passes": 7, "seconds": {"fit": 1.5},
               "started": "2026-01-01T00:00:00Z"}
    if class_names is not None:
        summary["class_names"] = class_names
    classes = [{"class": c, "best_latent": int(np.argmin(arrays["loss"][:, c])),
                "train_loss": 0.5, "test_loss": None, "train_baseline_ce": 0.7,
                "train_probe_r": 0.2, "test_probe_r": None} for c in range(n_classes)]
    write_json(folder / "probe1d_classes.json", {"summary": summary, "classes": classes})
    return arrays, converged


def test_dataset_is_exactly_the_npz_with_ade20k_names(tmp_path):
    folder = tmp_path / "run" / "inference" / "a1b2"
    arrays, converged = _write(folder, 33, 151)
    ds = probe_dask.load_results(tmp_path / "run", tmp_path / "shards" / "a1b2")
    assert dict(ds.sizes) == {"latent": 33, "class_id": 151}
    assert ds["weight"].dims == ("latent", "class_id")
    with np.load(folder / "probe1d_metrics.npz") as f:
        for var, key in [("loss", "loss"), ("weight", "weights"), ("bias", "biases"),
                         ("tp", "tp"), ("fp", "fp"), ("tn", "tn"), ("fn", "fn"),
                         ("converged", "converged")]:
            assert ds[var].dtype == f[key].dtype
            np.testing.assert_array_equal(ds[var].to_numpy(), f[key])
    np.testing.assert_array_equal(ds["loss"].to_numpy(), arrays["loss"])
    np.testing.assert_array_equal(ds["converged"].to_numpy(), converged)
    names = list(ds["class_name"].to_numpy())
    assert names[0] == "other" and names[1] == "wall" and names[13] == "person"
    assert names[150] == "flag" and len(set(names)) == 151
    assert ds.attrs["version"] == "9.9" and ds.attrs["solver_passes"] == 7
    assert json.loads(ds.attrs["kernel"]) == {"c on cpu": 2}
    # the per-class table: names, NaN for null, indexed by class
    table = load_class_table(tmp_path / "run", "a1b2")
    assert list(table.index) == list(range(151)) and table.loc[13, "name"] == "person"
    assert table["test_probe_r"].isna().all() and (table["train_probe_r"] == 0.2).all()
    assert table.loc[5, "best_latent"] == int(np.argmin(arrays["loss"][:, 5]))


def test_class_dimension_is_a_keyword_and_every_variable_is_described(tmp_path):
    folder = tmp_path / "out" / "s1"
    arrays, converged = _write(folder, 6, 5, class_names=list("abcde"))
    ds = load_results(results_dir=folder)
    # the dimension works as a keyword argument (``class`` would be a SyntaxError)
    three = ds.sel(class_id=3)
    assert three["class_name"].item() == "d"
    np.testing.assert_array_equal(three["loss"].to_numpy(), arrays["loss"][:, 3])
    np.testing.assert_array_equal(ds.isel(class_id=slice(1, 3))["converged"].to_numpy(),
                                  converged[:, 1:3])
    assert ds["loss"].sel(class_id=3, latent=4).item() == arrays["loss"][4, 3]
    assert "class" not in ds.dims and "class" not in ds.coords
    # every variable and coordinate says what it is; units where they apply
    for name in [*ds.data_vars, *ds.coords]:
        attrs = ds[name].attrs
        assert attrs.get("long_name") and attrs.get("description"), name
    units = {name: ds[name].attrs.get("units") for name in ds.data_vars}
    assert units == {"loss": "nats", "weight": "logit per unit of SAE activation",
                     "bias": "logit", "tp": "rows", "fp": "rows", "tn": "rows", "fn": "rows",
                     "converged": None}
    # attributes are per Dataset: changing one does not change the next one loaded
    ds["loss"].attrs["units"] = "bits"
    assert load_results(results_dir=folder)["loss"].attrs["units"] == "nats"


def test_ade20k_list_is_the_150_scene_parsing_classes():
    assert len(ADE20K_150) == 150 and len(set(ADE20K_150)) == 150
    assert ADE20K_NAMES[:4] == ("other", "wall", "building", "sky")
    assert ADE20K_150[-3:] == ("glass", "clock", "flag")


def test_stored_class_names_win_and_other_sizes_are_numbered(tmp_path):
    folder = tmp_path / "out" / "s1"
    _write(folder, 4, 3, class_names=["bg", "cat", "dog"])
    ds = load_results(results_dir=folder)
    assert list(ds["class_name"].to_numpy()) == ["bg", "cat", "dog"]
    folder2 = tmp_path / "out" / "s2"
    _write(folder2, 4, 5)
    assert list(load_results(results_dir=folder2)["class_name"].to_numpy())[4] == "class 4"
    store_class_names(list("abcde"), None, None, results_dirs=[folder2])
    assert list(load_class_table(results_dir=folder2)["name"]) == list("abcde")


def test_class_names_file_errors_name_the_file(tmp_path):
    good = tmp_path / "names.txt"
    good.write_text("bg\ncat\ndog\n")
    assert read_class_names(good) == ["bg", "cat", "dog"]
    bad = tmp_path / "blank.txt"
    bad.write_text("bg\n\ndog\n")
    with pytest.raises(InputError, match=r"blank.txt: line 2: found a blank line"):
        read_class_names(bad)
    with pytest.raises(InputError, match=r"names.txt: class names: found 3 names; expected 151"):
        check_class_names(read_class_names(good), 151, good)
    with pytest.raises(InputError, match=r"probe1d_metrics.npz: results: found no such file"):
        load_results(tmp_path, "nothing")

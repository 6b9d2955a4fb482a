"""The built-in demo: a realistic synthetic run in the users' layout, made once.

``probe-dask demo`` calls :func:`demo_run` and then the same job as ``probe-dask fit``.
The run is sized so the whole demo (data, fit, evaluation) takes well under three
minutes on a 2-core machine; its shape (151 classes, power-law latents, 256 patches per
image) is that of the users' ADE20K shards.

Memory per process: whatever ``synthetic.make_run`` holds (one row chunk at a time).
"""

from __future__ import annotations

import logging
import json
from dataclasses import dataclass
from pathlib import Path

from probe_dask.testing.synthetic import make_run

__all__ = ["demo_run"]

logger = logging.getLogger(__name__)

#: Shape of the demo run (about 1.6 million non-zeros in train, 0.4 million in test).
DEMO_PARAMS = dict(
    n_train_examples=96,
    n_test_examples=24,
    tokens_per_example=256,
    d_sae=4096,
    n_classes=151,
)


@dataclass(frozen=True)
class DemoRun:
    """Where the demo's run and shards are."""

    run_dir: Path
    train_shard: Path
    test_shard: Path


def demo_run(out, *, n_train_examples=None, seed=0, log=None) -> DemoRun:
    """Make the demo run under ``out`` (or reuse it when it was made with the same settings).

    Parameters
    ----------
    out : path
        Folder of the synthetic run.
    n_train_examples : int, optional
        Images in the train shard (default ``DEMO_PARAMS``); test gets a quarter.
    seed : int
        Seed of the generator.
    log : callable, optional
        Receives one-line messages (default: this module's logger, at INFO).
    """
    log = logger.info if log is None else log
    params = dict(DEMO_PARAMS, seed=seed)
    if n_train_examples is not None:
        params.update(n_train_examples=n_train_examples,
                      n_test_examples=max(1, n_train_examples // 4))
    out = Path(out)
    marker = out / "demo-params.json"
    if marker.exists():
        made = json.loads(marker.read_text())
        run = DemoRun(*(Path(made[k]) for k in ("run_dir", "train_shard", "test_shard")))
        if made.get("params") == params and all(p.exists() for p in (run.run_dir, run.train_shard)):
            log(f"reusing the synthetic run in {out}")
            return run
    log(f"making a synthetic run in {out} ({params['n_train_examples']} train images x "
        f"{params['tokens_per_example']} patches, {params['d_sae']} latents, "
        f"{params['n_classes']} classes)")
    made = make_run(out, **params)
    run = DemoRun(Path(made.run_dir), Path(made.train_shard), Path(made.test_shard))
    marker.write_text(json.dumps({"params": params, **{k: str(v) for k, v in vars(run).items()}}) + "\n")
    return run

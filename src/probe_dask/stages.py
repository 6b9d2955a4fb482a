"""The stages of a run, in one vocabulary: what the fit and the job emit, what telemetry
records, and what the memory plan predicts.

:class:`Stage` names every stage once. Two kinds share it:

- *run stages*, in the order a run passes them: the events ``engine.fit`` and ``app.job``
  send to their callbacks (:func:`emit`), and the ``stage`` of telemetry's ``host_mem``
  readings (the CLI adds ``open``, ``ingest`` and ``cluster``, telemetry ``end``);
- *plan stages*: when each buffer of the memory plan is live, per process
  (:data:`WORKER_STAGES`, :data:`DRIVER_STAGES`).

:data:`WORKER_PLAN_STAGES` and :data:`DRIVER_PLAN_STAGE` say which plan stage each run
stage's memory reading measures: the only translation between the two.

``Stage`` is a ``str`` enum: members compare and hash equal to their values, and are
written to JSON as those values (``"fit_start"``), so callbacks may compare them with plain
strings.

Base layer: imports nothing of probe_dask. Memory per process: nothing (constants only).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Stage", "WORKER_STAGES", "DRIVER_STAGES", "MEASURED", "WORKER_PLAN_STAGES",
           "DRIVER_PLAN_STAGE", "emit"]


class Stage(StrEnum):
    """Every stage name of a run and of its memory plan."""

    # -- run stages, in order (who emits them)
    OPEN = "open"  #: the CLI started (cli); also the plan's first driver stage
    INGEST = "ingest"  #: both shards opened and checked (cli)
    CLUSTER = "cluster"  #: the cluster is up (cli)
    PLAN = "plan"  #: the memory plan is made (job, with ``plan=``); also a plan driver stage
    LABEL_COUNTS_START = "label_counts_start"  #: the train label pass begins (fit)
    RESUMED = "resumed"  #: solver state read from a checkpoint (fit)
    FIT_START = "fit_start"  #: solver passes begin (fit); also a plan driver stage
    ITERATION = "iteration"  #: one solver pass done, with its statistics (fit); also a plan driver stage
    FIT_END = "fit_end"  #: (fit)
    EVALUATE_TRAIN_START = "evaluate_train_start"  #: (job)
    EVALUATE_TRAIN_END = "evaluate_train_end"  #: (job)
    EVALUATE_TEST_END = "evaluate_test_end"  #: (job)
    WRITE_END = "write_end"  #: every result file is in place (job)
    END = "end"  #: telemetry closes

    # -- plan stages only (memory.model: when each buffer is live)
    LABEL_TRAIN = "label_train"  #: worker: the train label pass
    FIT = "fit"  #: worker: the solver passes
    EVAL_TRAIN = "eval_train"  #: worker: evaluation of the train split
    LABEL_TEST = "label_test"  #: worker: the test split's label statistics
    EVAL_TEST = "eval_test"  #: worker: evaluation of the test split
    EVALUATE = "evaluate"  #: driver: both evaluations
    WRITE = "write"  #: driver: writing the results


#: Stages of a worker in the memory plan, in run order.
WORKER_STAGES = (Stage.LABEL_TRAIN, Stage.FIT, Stage.EVAL_TRAIN, Stage.LABEL_TEST, Stage.EVAL_TEST)
#: Stages of the driver in the memory plan, in run order.
DRIVER_STAGES = (Stage.OPEN, Stage.PLAN, Stage.FIT_START, Stage.ITERATION, Stage.EVALUATE, Stage.WRITE)

#: Run stages at which telemetry reads the memory of every process (a ``host_mem`` event).
MEASURED = frozenset({
    Stage.OPEN, Stage.INGEST, Stage.CLUSTER, Stage.LABEL_COUNTS_START, Stage.FIT_START,
    Stage.ITERATION, Stage.FIT_END, Stage.EVALUATE_TRAIN_START, Stage.EVALUATE_TRAIN_END,
    Stage.EVALUATE_TEST_END, Stage.WRITE_END, Stage.END})

# A reading's peak is the peak since the previous reading, so each run stage below measures
# the plan stage(s) that ran just before it: fit_start closes the train label pass,
# evaluate_test_end the test split's label and evaluation pass (one pass, both stages).
#: Run stage -> the worker plan stages its reading measures (in run order).
WORKER_PLAN_STAGES = {
    Stage.FIT_START: (Stage.LABEL_TRAIN,),
    Stage.ITERATION: (Stage.FIT,),
    Stage.EVALUATE_TRAIN_END: (Stage.EVAL_TRAIN,),
    Stage.EVALUATE_TEST_END: (Stage.LABEL_TEST, Stage.EVAL_TEST),
}
#: Run stage -> the driver plan stage its reading measures.
DRIVER_PLAN_STAGE = {
    Stage.OPEN: Stage.OPEN, Stage.INGEST: Stage.OPEN,
    Stage.LABEL_COUNTS_START: Stage.PLAN,
    Stage.FIT_START: Stage.FIT_START,
    Stage.ITERATION: Stage.ITERATION,
    Stage.EVALUATE_TRAIN_END: Stage.EVALUATE, Stage.EVALUATE_TEST_END: Stage.EVALUATE,
    Stage.WRITE_END: Stage.WRITE,
}


def emit(callbacks, stage: Stage, **info) -> None:
    """Call every callback as ``callback(stage, info)`` (``callbacks`` may be None).

    What ``engine.fit`` and ``app.job`` tell their callbacks (telemetry, progress logs,
    tests) at each run stage.
    """
    for callback in callbacks or ():
        callback(stage, info)

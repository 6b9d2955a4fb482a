"""The ``probe-dask report`` subcommand and the ``--class-names`` flag: parsing only.

``add_report_parser`` adds the subcommand to the CLI's parser; ``cmd_report`` names the
classes when asked (``io.results.store_class_names``) and writes the page
(``app.html_report.write_report``). Memory per process: what ``write_report`` holds.
"""

from __future__ import annotations

from pathlib import Path

from probe_dask.app.html_report import REPORT_NAME, write_report
from probe_dask.io.results import check_class_names, read_class_names, store_class_names

__all__ = ["add_report_parser", "add_class_names_flag", "class_names"]


def class_names(path, n_classes: int):
    """The names of ``--class-names FILE`` (None without it), one per class, else InputError."""
    return None if path is None else check_class_names(read_class_names(path), n_classes, path)


def add_class_names_flag(g):
    """``--class-names FILE`` (fit, demo, report)."""
    g.add_argument("--class-names", metavar="FILE", default=None,
                   help="class names, one per line, label 0 first (stored with the results; "
                        "default: the ADE20K-150 names when there are 151 classes)")


def add_report_parser(sub):
    """The ``report`` subcommand."""
    report = sub.add_parser("report", help="write an HTML page with figures of a finished run")
    report.add_argument("--run", required=True, help="SAE run folder (as given to fit)")
    report.add_argument("--train-shards", required=True, metavar="DIR", help="train shard folder")
    report.add_argument("--test-shards", required=True, metavar="DIR", help="test shard folder")
    report.add_argument("--out", metavar="HTML", default=None,
                        help=f"the page (default: {REPORT_NAME} beside the train results; "
                             "its PNGs go to a folder beside it)")
    report.add_argument("--results", metavar="DIR", default=None,
                        help="the folder given to `fit --out` (default: the run's inference folders)")
    add_class_names_flag(report)
    report.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    """Write the page; print its path on stdout."""
    dirs = None
    if args.results is not None:  # fit --out DIR: each split's results in DIR/<shard_id>
        dirs = [Path(args.results) / Path(s).name for s in (args.train_shards, args.test_shards)]
    if args.class_names is not None:
        store_class_names(read_class_names(args.class_names), args.run,
                          (args.train_shards, args.test_shards), results_dirs=dirs,
                          source=args.class_names)
    page = write_report(args.run, args.train_shards, args.test_shards, out=args.out,
                        results_dirs=dirs)
    print(page)
    return 0

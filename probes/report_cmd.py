"""`python -m probes report DIR`: the study report (or one run's) from saved records and results only,
no training (probes.report). DIR is a study directory (study.json; writes DIR/index.html), a run directory with
probes/ (writes DIR/report/index.html) or a checkpoints directory of `python -m probes checkpoints`
(checkpoints.json; writes DIR/index.html)."""
from __future__ import annotations

from probes.report import write_report


def register(subparsers) -> None:
    p = subparsers.add_parser("report", help="regenerate a study's (or run's, or checkpoint series') figures and "
                              "index.html from saved records and results", description=__doc__)
    p.add_argument("dir", metavar="DIR", help="a study, run or checkpoints directory")
    p.set_defaults(func=run)


def run(args) -> None:
    print(f"wrote {write_report(args.dir)}")

"""`python -m probes study --config configs/study_default.py --out DIR [key=value ...]`: train one model per
positional scheme with in-training probes, disrupt the final models and write DIR/index.html. Rerunning
resumes and skips finished work. Overrides: `study.KEY=value` (e.g. study.schemes=rope,none) or any key of
the base run config (e.g. train.steps=600)."""
from __future__ import annotations

import shlex
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("study", help="train one model per positional scheme, probe, disrupt, report",
                              description=__doc__)
    p.add_argument("--config", required=True, help="a Python file exposing STUDY = StudyConfig(...); "
                   "path.py:NAME picks another name")
    p.add_argument("--out", required=True, help="study directory (created, or resumed)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)


def run(args) -> None:
    from probes.study import load_study, run_study
    from train.loop import NonFiniteLoss

    t0 = time.perf_counter()
    study = load_study(args.config, args.overrides)
    command = shlex.join(["python", "-m", "probes", *getattr(args, "argv", [])])
    try:
        index = run_study(study, args.out, command=command)
    except NonFiniteLoss as e:
        raise ValueError(str(e)) from None
    print(f"study done in {time.perf_counter() - t0:.0f} s")
    print(f"wrote {index}")

"""`python -m probes sweep --config configs/sweep_cpu.py --out DIR [--only NAME,...] [--report-only] [key=value ...]`:
one study per named setting of the config (probes.sweep) in DIR/<setting>/, then DIR/sweep.md and DIR/sweep.json,
a table of the studies' statements side by side (RoPE / NoPE max ratio of Q, K and V, RoPE's K low-frequency share,
the first step a Q/K dim crossed lambda). Rerunning resumes and skips finished work. Overrides (`study.KEY=value`
or a base run config key) change the base study before each setting's own overrides apply."""
from __future__ import annotations

import shlex
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="one study per setting of a driver (steps, width, depth, lr, theta, "
                              "length), and a table of their statements", description=__doc__)
    p.add_argument("--config", required=True, help="a Python file exposing SWEEP = SweepConfig(...); "
                   "path.py:NAME picks another name")
    p.add_argument("--out", required=True, help="sweep directory (created, or resumed)")
    p.add_argument("--only", help="comma list of settings to run (default: all); the table lists every setting")
    p.add_argument("--report-only", action="store_true", help="train nothing: rebuild sweep.md and sweep.json from "
                   "the studies' saved records")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=run)


def run(args) -> None:
    from probes.sweep import load_sweep, run_sweep, write_table

    t0 = time.perf_counter()
    sweep = load_sweep(args.config, args.overrides)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    if args.report_only:
        if only:
            raise ValueError("--only chooses the settings to train and --report-only trains none; the table always "
                             "lists every setting")
        path, failed = write_table(sweep, args.out), {}
    else:
        command = shlex.join(["python", "-m", "probes", *getattr(args, "argv", [])])
        path, failed = run_sweep(sweep, args.out, only=only, command=command)
        print(f"sweep done in {time.perf_counter() - t0:.0f} s")
    print("\n".join(line for line in path.read_text().splitlines() if line.startswith("|")))
    print(f"wrote {path} and {path.with_name('sweep.json')}")
    if failed:
        raise ValueError(f"training diverged in setting(s) {', '.join(failed)} (their rows say so); the other "
                         "settings ran")

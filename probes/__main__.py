"""`python -m probes SUBCOMMAND ...`. Each subcommand module has `register(subparsers)`, which adds its
parser and sets `func`; add a module to COMMANDS to add a subcommand."""
from __future__ import annotations

import argparse
import importlib
import sys

from minimal_lm.cli import warnings_as_lines
from minimal_lm.files import refuse_file_as_dir

COMMANDS = ("probes.massive_cmd", "probes.disrupt_cmd", "probes.study_cmd", "probes.report_cmd",
            "probes.checkpoints_cmd", "probes.table1_cmd", "probes.sweep_cmd")


def main(argv=None) -> int:
    """The command line chooses matplotlib's Agg backend (files only); importing probes chooses none."""
    import matplotlib

    matplotlib.use("Agg")
    parser = argparse.ArgumentParser(prog="python -m probes", description="Probes of massive values in attention.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"python -m probes {args.command}"
    try:
        if getattr(args, "out", None) is not None:  # every subcommand's --out is a directory
            refuse_file_as_dir(args.out)
        with warnings_as_lines(prog):  # our warnings (e.g. ignored config keys): one "PROG: warning: ..." line
            args.func(args)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

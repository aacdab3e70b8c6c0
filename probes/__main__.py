"""`python -m probes SUBCOMMAND ...`. Each subcommand module has `register(subparsers)`, which adds its
parser and sets `func`; add a module to COMMANDS to add a subcommand."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

COMMANDS = ("probes.massive_cmd", "probes.disrupt_cmd", "probes.study_cmd", "probes.report_cmd")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probes", description="Probes of massive values in attention.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        parser.exit(2, f"python -m probes {args.command}: error: --out {out} is a file, expected a directory "
                       f"(the file is left as is)\n")
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, f"python -m probes {args.command}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the command lines of minimal_lm and probes share: the --strict flag's help, and our own warnings
as one line each on stderr.

Python's default warning format is two lines, a source location and the source line of the `warn` call
("/.../minimal_lm/hf.py:66: IgnoredConfigKeys: ...\\n  cfg = from_hf_config(hf, config_path, strict=strict)"),
which tells a command-line user nothing. Inside `warnings_as_lines`, a UserWarning raised from minimal_lm or
probes prints as "PROG: warning: MESSAGE", like argparse's "PROG: error: MESSAGE"; warnings filters still
apply (``-W error`` still turns it into an error) and other libraries' warnings keep Python's format.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

from minimal_lm.hf_config import IgnoredConfigKeys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = tuple(os.path.join(_ROOT, package) + os.sep for package in ("minimal_lm", "probes"))

STRICT_HELP = ("refuse Hugging Face config.json keys that minimal_lm does not read (default: ignore them with one "
               "warning naming them)")
"""The --strict flag's help, the same in every command that loads a model (passed to from_pretrained's strict)."""


@contextlib.contextmanager
def warnings_as_lines(prog: str):
    """Print minimal_lm's and probes' own UserWarnings as "PROG: warning: MESSAGE" on stderr while inside."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if not (issubclass(category, UserWarning) and os.path.abspath(filename).startswith(_OURS)):
                return shown(message, category, filename, lineno, file, line)
            text = " ".join(str(message).split())
            if issubclass(category, IgnoredConfigKeys):  # the library says strict=True; the commands say --strict
                text = text.replace("pass strict=True", "pass --strict")
            print(f"{prog}: warning: {text}", file=sys.stderr if file is None else file, flush=True)

        warnings.showwarning = show
        yield

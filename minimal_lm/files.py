"""File helpers every room and CLI shares: the one atomic writer, the one JSON-lines reader, and the check
that an output directory is not a file."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """A file opened for writing in place of `path`: written to a temporary file beside it, flushed,
    fsynced and renamed over `path` when the block ends, so a kill leaves the old file or the new one,
    never half of one. On an error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through atomic_file."""
    with atomic_file(path, "w") as f:
        f.write(text)


def read_json(path):
    """The JSON file `path`; a malformed one is a ValueError naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path, *, cut_tail_ok: bool = False) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON-lines file; a line that is not JSON raises
    ValueError naming `path:line`. With cut_tail_ok, a last line that does not parse is skipped: an
    append-only log whose writer was killed mid-line."""
    lines = [(n, s) for n, s in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1) if s.strip()]
    out = []
    for i, (n, s) in enumerate(lines):
        try:
            out.append((n, json.loads(s)))
        except json.JSONDecodeError as e:
            if not (cut_tail_ok and i == len(lines) - 1):
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}): {s[:80]!r}") from None
    return out


def read_log(path) -> list[dict]:
    """The lines of a run's append-only log (metrics.jsonl, disruption.jsonl): a cut-off last line (a killed
    run) is skipped, damage elsewhere raises naming the line, a missing file reads as empty."""
    return [x for _, x in read_jsonl(path, cut_tail_ok=True)] if Path(path).is_file() else []


def refuse_file_as_dir(path, flag: str = "--out") -> Path:
    """`path` as a Path; ValueError if a file is there where a directory goes (the file is left as is)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, expected a directory (the file is left as is)")
    return path

"""Run directories and their orbax checkpoints, the training side: one writer per directory (`hold`: a
lock a second run or study is refused by at once, naming the holder; a run of another config is refused
too), the bookkeeping only process 0 of a multi-process run does, the CheckpointManager, params,
optimizer state, step, data position and checksums saved together at each checkpoint step, resume from
the newest checkpoint that restores and verifies (damaged newer ones set aside), and the run's JSON-lines
logs. Reading a run for inference (`from_pretrained`) is minimal_lm.run_dir's, which defines the item
names and checksums used here."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from minimal_lm.config import ConfigError
from minimal_lm.files import read_log, write_atomic
from minimal_lm.run_dir import (
    CHECKPOINTS,
    META,
    OPT_STATE,
    PARAMS,
    abstract,
    checkpoint_steps,
    checksums,
    shape_mismatches,
    verify,
)
from minimal_lm.safetensors_io import CheckpointError
from train.config import RunConfig, config_diff
from train.step import TrainState

CORRUPT = "corrupt_checkpoints"
"""Damaged checkpoints are moved here (never deleted), out of orbax's sight."""
RUN_OUTPUTS = (CHECKPOINTS, CORRUPT, "metrics.jsonl", "probes")
"""What train.overwrite deletes: the old run's checkpoints, metrics and probe records."""


class RunDirConflict(ConfigError):
    """The run directory holds a run of another config."""


class RunDirBusy(RunDirConflict):
    """Another process (a run or a study) is writing into the directory."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was set aside and an earlier one used."""


# ---- one writer per directory ---------------------------------------------------------------------------

LOCK = ".lock"
"""The lock file of a run or study directory: locked (fcntl.flock) while a process writes there, so the
kernel releases it when that process dies, even by kill -9; it holds the holder's pid, host and start
time for the refusal message, and is removed on a clean exit (a stale one left by a kill blocks nothing)."""
_held: dict[str, list] = {}  # resolved directory -> [open lock file, depth]: re-entrant in one process


@contextlib.contextmanager
def hold(path):
    """Hold `path`'s writer lock for the block (the directory is created); RunDirBusy at once, naming
    the holder's pid and host, if another process holds it. Re-entrant within a process (the study holds
    each scheme's directory around the training run, which takes it again). In a multi-process run only
    process 0 takes it, and every process raises if process 0 could not."""
    path = Path(path)
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    f = on_process_0(_acquire, path)
    _held[key] = [f, 1]
    try:
        yield
    finally:
        del _held[key]
        if f is not None:
            _release(path / LOCK, f)


def _acquire(path: Path):
    if path.exists() and not path.is_dir():
        raise RunDirConflict(f"--out {path}: is a file, expected a run directory")
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    while True:
        f = open(lock, "a+", encoding="utf-8")
        try:
            if not _try_lock(f):
                f.seek(0)
                raise RunDirBusy(f"{path} is in use by {_holder(f.read())}: one writer per directory. Wait for "
                                 f"it to finish or stop it, or use another --out")
            if sys.platform == "win32" or os.fstat(f.fileno()).st_ino == os.stat(lock).st_ino:
                break  # else the holder removed this file as we opened it: lock the new one
        except FileNotFoundError:
            pass
        except BaseException:
            f.close()
            raise
        f.close()
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                        "command": " ".join(sys.argv)}) + "\n")
    f.flush()
    return f


def _release(lock: Path, f) -> None:
    try:
        lock.unlink()  # while still locked: a process that opened it meanwhile sees a new file and retries
    except OSError:
        pass  # on Windows an open file cannot be removed; the next holder rewrites it
    f.close()


def _try_lock(f) -> bool:
    """Lock `f` without waiting: fcntl.flock, else msvcrt's byte lock (also released when the holder dies,
    taken past the end so the holder's details stay readable), else no lock (with a warning)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    try:
        import msvcrt
    except ImportError:
        warnings.warn("no file locking on this platform (neither fcntl nor msvcrt): two processes may write "
                      "into one run directory", RuntimeWarning, stacklevel=3)
        return True
    f.seek(1 << 30)
    try:
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info['pid']} on host {info['host']} (since {info.get('started_utc', '?')} UTC: "
                f"{info.get('command', '')})")
    except (json.JSONDecodeError, KeyError, TypeError):
        return "another process (which has not written its pid and host yet)"


# ---- many processes: process 0 keeps the books ------------------------------------------------------------

_PASSED = (RunDirBusy, RunDirConflict, ConfigError, CheckpointError)
"""Errors that process 0 passes on to the other processes of a multi-process run (others: RuntimeError)."""


def is_writer() -> bool:
    """Whether this process writes the run directory's own files (metrics, config, logs): process 0."""
    return jax.process_index() == 0


def on_process_0(fn, *args):
    """fn(*args) on process 0 only, for run-directory bookkeeping (one process, one run: just the call).
    With several processes, the others wait for it and raise what it raised (its type among _PASSED and
    its message), so that none of them waits forever for a process that stopped; they return None."""
    if jax.process_count() == 1:
        return fn(*args)
    from jax.experimental import multihost_utils

    result, error, code, message = None, None, 0, np.zeros(2048, np.uint8)
    if is_writer():
        try:
            result = fn(*args)
        except Exception as e:
            error = e
            code = 1 + next((i for i, t in enumerate(_PASSED) if type(e) is t), len(_PASSED))
            text = f"process 0: {e}".encode()[:2048]
            message[:len(text)] = np.frombuffer(text, np.uint8)
    code, message = multihost_utils.broadcast_one_to_all((np.int32(code), message))
    if error is not None:
        raise error
    if int(code):
        kind = (*_PASSED, RuntimeError)[int(code) - 1]
        raise kind(bytes(np.asarray(message, np.uint8)).rstrip(b"\0").decode(errors="replace"))
    return result


def sync(name: str) -> None:
    """Wait for every process (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def open_run_dir(out: Path, cfg: RunConfig) -> None:
    """Make `out` ready for `cfg`: refuse a different run's directory (naming the keys that differ)
    unless train.overwrite, which deletes its checkpoints, metrics and probe records; then write config.json."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirConflict(f"--out {out}: is a file, expected a run directory")
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "config.json"
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            old = e
        if not isinstance(old, dict) and not cfg.train.overwrite:
            why = f"not valid JSON ({old})" if isinstance(old, Exception) else f"a JSON {type(old).__name__}"
            raise RunDirConflict(f"{cfg_file}: {why}, expected a run config; pass train.overwrite=true to start over")
        if cfg.train.overwrite:
            for name in RUN_OUTPUTS:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
                else:
                    (out / name).unlink(missing_ok=True)
        else:
            diff = config_diff(old, cfg.to_dict(), defaults=RunConfig().to_dict())
            if diff:
                raise RunDirConflict(f"{out} holds a run with another config; differing keys: {'; '.join(diff)}. "
                                     f"Use another --out, or pass train.overwrite=true to delete that run's "
                                     f"checkpoints, metrics and probe records and start over")
    elif any(p.name != LOCK for p in out.iterdir()) and not cfg.train.overwrite:
        raise RunDirConflict(f"{out} is not empty and has no config.json, so it is not a run directory; "
                             f"use another --out or pass train.overwrite=true")
    write_atomic(cfg_file, json.dumps(cfg.to_dict(), indent=2) + "\n")


def checkpoint_manager(path, read_only: bool = True, **options) -> ocp.CheckpointManager:
    """An orbax CheckpointManager on path/checkpoints (read-only by default, without orbax's notices)."""
    options = ocp.CheckpointManagerOptions(read_only=read_only, create=not read_only,
                                           **({"save_interval_steps": 0} if read_only else {}), **options)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR if read_only else level)
    try:
        return ocp.CheckpointManager(Path(path).absolute() / CHECKPOINTS, options=options)
    finally:
        absl.setLevel(level)


def manager(out: Path, cfg: RunConfig) -> ocp.CheckpointManager:
    """The writing manager of a run: keeps train.keep_checkpoints (and every train.keep_every-th)."""
    tc = cfg.train
    return checkpoint_manager(out, read_only=False, max_to_keep=tc.keep_checkpoints,
                              keep_period=tc.keep_every or None, cleanup_tmp_directories=True)


def save(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> None:
    """Batches are a pure function of (seed, step), so the data position is the step."""
    meta = {"step": step, "data_position": step,
            "checksums": {PARAMS: checksums(state.params), OPT_STATE: checksums(state.opt_state)}}
    mngr.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(state.params), OPT_STATE: ocp.args.StandardSave(state.opt_state),
        META: ocp.args.JsonSave(meta)}))


def restore(mngr: ocp.CheckpointManager, step: int, like: TrainState) -> TrainState:
    """The state saved at `step`, shaped like `like` (a fresh state or its eval_shape), checked against its
    checksums; CheckpointError names the checkpoint and what is wrong."""
    where = Path(mngr.directory) / str(step)
    for item, tree in ((PARAMS, like.params), (OPT_STATE, like.opt_state)):
        wrong = shape_mismatches(where / item, tree)
        if wrong:
            raise CheckpointError(f"{where}: {item} do not fit this config: {'; '.join(wrong[:4])}")
    try:
        got = mngr.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(abstract(like.params)),
            OPT_STATE: ocp.args.StandardRestore(abstract(like.opt_state)), META: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax raises many types for missing files, bad shapes and corrupt data
        raise CheckpointError(f"{where}: cannot restore the training state: {type(e).__name__}: "
                              f"{str(e)[:300]}") from e
    meta = got[META] if isinstance(got[META], dict) else {}
    if meta.get("data_position") != step:
        raise CheckpointError(f"{where}: data position {meta.get('data_position')} does not match step {step}")
    sums = meta.get("checksums")
    for item in (PARAMS, OPT_STATE):
        verify(got[item], sums.get(item) if isinstance(sums, dict) else sums, f"{where}/{item}")
    return TrainState(got[PARAMS], got[OPT_STATE])


def resume(out: Path, like: TrainState) -> tuple[int, TrainState]:
    """(step, state) of the newest checkpoint in `out` that restores and verifies, or (0, like) when
    there is none. Newer damaged ones are moved to out/corrupt_checkpoints/ with a CheckpointWarning
    naming each; if checkpoints exist but none restores, CheckpointError lists why (never a silent
    start from scratch)."""
    out, failed = Path(out), []
    for step in reversed(steps_in(out)):
        try:
            with checkpoint_manager(out) as mngr:
                state = restore(mngr, step, like)
        except CheckpointError as e:
            failed.append((step, e))
            continue
        for bad, e in failed:
            moved = _set_aside(out, bad) if is_writer() else out / CORRUPT / str(bad)
            warnings.warn(f"checkpoint {out / CHECKPOINTS / str(bad)} is damaged ({e}); moved it to {moved} "
                          f"and resumed from step {step}", CheckpointWarning, stacklevel=2)
        return step, state
    if failed:
        raise CheckpointError(f"{out / CHECKPOINTS}: no checkpoint could be restored, so the run cannot resume: "
                              + " | ".join(str(e) for _, e in failed)
                              + ". Pass train.overwrite=true to start over")
    return 0, like


def steps_in(out: Path) -> list[int]:
    """Steps of the complete checkpoints in run directory `out`, ascending (none without checkpoints/)."""
    return checkpoint_steps(out) if (Path(out) / CHECKPOINTS).is_dir() else []


def _set_aside(out: Path, step: int) -> Path:
    dest = out / CORRUPT / str(step)
    n = 1
    while dest.exists():
        dest, n = out / CORRUPT / f"{step}.{n}", n + 1
    dest.parent.mkdir(exist_ok=True)
    os.replace(out / CHECKPOINTS / str(step), dest)
    return dest


def append_log(path, line: dict) -> None:
    """Append one JSON line to a run's log (metrics.jsonl, the study's disruption.jsonl)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def truncate_log(path, step: int) -> None:
    """Cut a run's log back to what a run resuming from the checkpoint at `step` continues: lines up to
    `step`, one per step (the last written wins), without a cut-off last line. Rewritten atomically, and
    only when a line goes."""
    path = Path(path)
    if not path.is_file():
        return
    keep = sorted({x["step"]: x for x in read_log(path) if x["step"] <= step}.values(), key=lambda x: x["step"])
    if len(keep) != sum(1 for s in path.read_text(encoding="utf-8").splitlines() if s.strip()):
        write_atomic(path, "".join(json.dumps(x) + "\n" for x in keep))

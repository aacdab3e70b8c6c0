"""Run directories and their orbax checkpoints, the training side: one writer per directory (a run of
another config is refused), the CheckpointManager, params, optimizer state, step, data position and
checksums saved together at each checkpoint step, resume from the newest checkpoint that restores and
verifies (damaged newer ones set aside), and the run's JSON-lines logs. Reading a run for inference
(`from_pretrained`) is minimal_lm.run_dir's, which defines the item names and checksums used here."""
from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

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


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was set aside and an earlier one used."""


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
            diff = config_diff(old, cfg.to_dict())
            if diff:
                raise RunDirConflict(f"{out} holds a run with another config; differing keys: {'; '.join(diff)}. "
                                     f"Use another --out, or pass train.overwrite=true to delete that run's "
                                     f"checkpoints, metrics and probe records and start over")
    elif any(out.iterdir()) and not cfg.train.overwrite:
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
            moved = _set_aside(out, bad)
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

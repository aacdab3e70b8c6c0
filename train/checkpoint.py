"""Run directories and their orbax checkpoints: params, optimizer state, step and data position are
saved together at each checkpoint step; the same command run again resumes from the latest one."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import orbax.checkpoint as ocp

from minimal_lm.config import ConfigError
from minimal_lm.run_dir import CHECKPOINTS, META, OPT_STATE, PARAMS, abstract, checkpoint_manager
from train.config import RunConfig, config_diff
from train.step import TrainState


class RunDirConflict(ConfigError):
    """The run directory holds a run of another config."""


def open_run_dir(out: Path, cfg: RunConfig) -> None:
    """Make `out` ready for `cfg`: refuse a different run's directory (naming the keys that differ)
    unless train.overwrite, which deletes its checkpoints and metrics; then write config.json."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "config.json"
    if cfg_file.is_file():
        try:
            old = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cfg_file}: not valid JSON ({e}); pass train.overwrite=true to start over") from None
        diff = config_diff(old, cfg.to_dict())
        if cfg.train.overwrite:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
        elif diff:
            raise RunDirConflict(f"{out} holds a run with another config; differing keys: {'; '.join(diff)}. "
                                 f"Use another --out, or pass train.overwrite=true to delete that run's "
                                 f"checkpoints and metrics and start over")
    elif any(out.iterdir()) and not cfg.train.overwrite:
        raise RunDirConflict(f"{out} is not empty and has no config.json, so it is not a run directory; "
                             f"use another --out or pass train.overwrite=true")
    cfg_file.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def manager(out: Path, cfg: RunConfig) -> ocp.CheckpointManager:
    tc = cfg.train
    return checkpoint_manager(out, read_only=False, max_to_keep=tc.keep_checkpoints,
                              keep_period=tc.keep_every or None)


def save(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> None:
    """Batches are a pure function of (seed, step), so the data position is the step."""
    mngr.save(step, args=ocp.args.Composite(**{
        PARAMS: ocp.args.StandardSave(state.params), OPT_STATE: ocp.args.StandardSave(state.opt_state),
        META: ocp.args.JsonSave({"step": step, "data_position": step})}))


def restore(mngr: ocp.CheckpointManager, step: int, like: TrainState) -> TrainState:
    """The state saved at `step`, shaped like `like` (a freshly initialised state)."""
    where = Path(mngr.directory) / str(step)
    try:
        got = mngr.restore(step, args=ocp.args.Composite(**{
            PARAMS: ocp.args.StandardRestore(abstract(like.params)),
            OPT_STATE: ocp.args.StandardRestore(abstract(like.opt_state)), META: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax raises many types for missing files, bad shapes and corrupt data
        raise ValueError(f"{where}: cannot restore the training state: {type(e).__name__}: {e}") from e
    if got[META].get("data_position") != step:
        raise ValueError(f"{where}: data position {got[META].get('data_position')} does not match step {step}")
    return TrainState(got[PARAMS], got[OPT_STATE])

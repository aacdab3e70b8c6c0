"""Read the params of our training runs: a directory with config.json ({"model": ..., "train": ...,
"data": ...}) and orbax checkpoints/<step>/{params, opt_state, meta}. The training side writes them."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.model import init_params

CHECKPOINTS = "checkpoints"
PARAMS, OPT_STATE, META = "params", "opt_state", "meta"


def is_run_dir(path) -> bool:
    """True for a directory holding config.json with a "model" section and a checkpoints/ folder."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / CHECKPOINTS).is_dir():
        return False
    try:
        return isinstance(json.loads((path / "config.json").read_text()).get("model"), dict)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_model_config(path) -> ModelConfig:
    f = Path(path) / "config.json"
    try:
        d = json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: not found; is {path} a run directory?") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        raise ConfigError(f"{f}: expected a \"model\" section (a run directory's config.json)")
    return ModelConfig.from_dict(d["model"], f"{f}: model")


def checkpoint_manager(path, read_only: bool = True, **options):
    """An orbax CheckpointManager on path/checkpoints (read-only by default, without orbax's notices)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(read_only=read_only, create=not read_only,
                                           **({"save_interval_steps": 0} if read_only else {}), **options)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR if read_only else level)
    try:
        return ocp.CheckpointManager(Path(path).absolute() / CHECKPOINTS, options=options)
    finally:
        absl.setLevel(level)


def checkpoint_steps(path) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    if not (Path(path) / CHECKPOINTS).is_dir():
        raise FileNotFoundError(f"{Path(path) / CHECKPOINTS}: no checkpoints directory; is {path} a run directory?")
    with checkpoint_manager(path) as mngr:
        return sorted(mngr.all_steps())


def abstract(tree):
    """ShapeDtypeStructs (with the arrays' shardings) describing `tree`, as orbax restores want."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", device)), tree)


def load_run(path, dtype=None, step: int | None = None) -> tuple[ModelConfig, dict, str | None]:
    """(config, params, tokenizer.json path or None) of a run at `step` (default: the latest).
    With `dtype`, float params are cast and the config's dtype and param_dtype set to it."""
    import orbax.checkpoint as ocp

    path = Path(path)
    cfg = read_model_config(path)
    steps = checkpoint_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path / CHECKPOINTS}: no complete checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{path / CHECKPOINTS}: no checkpoint at step {step}; available: {steps}")
    target = abstract(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    try:
        with checkpoint_manager(path) as mngr:
            args = ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(target)})
            params = mngr.restore(step, args=args)[PARAMS]
    except Exception as e:  # orbax raises many types for missing files, bad shapes and corrupt data
        raise ValueError(f"{path / CHECKPOINTS / str(step)}: cannot restore params for the model in "
                         f"{path / 'config.json'}: {type(e).__name__}: {e}") from e
    if dtype is not None:
        name = jnp.dtype(dtype).name
        params = jax.tree.map(lambda a: a.astype(name) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
        cfg = cfg.replace(dtype=name, param_dtype=name)
    tok = path / "tokenizer.json"
    return cfg, params, str(tok) if tok.is_file() else None

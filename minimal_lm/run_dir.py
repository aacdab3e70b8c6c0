"""Read a training run for inference: a directory with config.json ({"model": ..., "train": ..., "data": ...})
and orbax checkpoints/<step>/{params, opt_state, meta}. Read-only: train.checkpoint writes, resumes and
manages them (orbax's checkpoint manager); this module holds what both sides must agree on (the item names, the
per-array checksums, the shape check) because `from_pretrained` of a run directory restores its params and
checks their checksums, and minimal_lm imports neither train nor probes."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.model import init_params
from minimal_lm.safetensors_io import CheckpointError

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
        d = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: not found; is {path} a run directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
        raise ConfigError(f"{f}: expected a \"model\" section (a run directory's config.json)")
    return ModelConfig.from_dict(d["model"], f"{f}: model")


def checkpoint_steps(path) -> list[int]:
    """Steps with a complete (finalized) checkpoint in run directory `path`, ascending."""
    import orbax.checkpoint as ocp

    if not (Path(path) / CHECKPOINTS).is_dir():
        raise FileNotFoundError(f"{Path(path) / CHECKPOINTS}: no checkpoints directory; is {path} a run directory?")
    return sorted(ocp.utils.checkpoint_steps(Path(path).absolute() / CHECKPOINTS))


def abstract(tree):
    """ShapeDtypeStructs describing `tree`, as orbax restores want: with the arrays' shardings, or on
    the first device for shapes without one (never the shardings the checkpoint was saved with)."""
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None) or device), tree)


def checksums(tree) -> dict[str, int]:
    """Per-leaf checksums of the exact bits: a sum over elements of a hash of (bits, position) that is
    one-to-one in the bits, so any single changed element shows. Orbax does not checksum array data:
    a flipped bit restores silently."""
    return {k: int(v) for k, v in leaves(jax.device_get(_checksums(tree))).items()}


def leaves(tree) -> dict:
    """{'a/b/0': leaf}: leaf names that are the same for a NamedTuple and the dict orbax stores it as."""
    def name(k):
        return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
    return {"/".join(map(name, path)): x for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@jax.jit
def _checksums(tree):
    def one(x):
        bits = jnp.dtype(x.dtype).itemsize * 8
        u = (x.astype(jnp.uint32) if x.dtype == jnp.bool_ else
             jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{bits}")).astype(jnp.uint32))
        position = jnp.arange(x.size, dtype=jnp.uint32).reshape(x.shape)
        h = u * jnp.uint32(0x9E3779B1) + position * jnp.uint32(0x85EBCA77)
        h = (h ^ (h >> 15)) * jnp.uint32(0xC2B2AE35)
        return jnp.sum(h ^ (h >> 13), dtype=jnp.uint32)
    return jax.tree.map(one, tree)


def verify(tree, expected: dict | None, where: str) -> None:
    """Raise CheckpointError naming the first leaf whose checksum differs from `expected` (a dict
    from `checksums`); None (a checkpoint written before checksums) is accepted."""
    if expected is None:
        return
    if not isinstance(expected, dict):
        raise CheckpointError(f"{where}: its stored checksums are unreadable ({type(expected).__name__})")
    got = checksums(tree)
    if set(got) != set(expected):
        raise CheckpointError(f"{where}: holds leaves {sorted(expected)[:4]}..., expected {sorted(got)[:4]}...")
    bad = [k for k in got if got[k] != expected[k]]
    if bad:
        raise CheckpointError(f"{where}: data of {', '.join(bad[:4])}{' and more' if len(bad) > 4 else ''} "
                              f"does not match its checksum (corrupt file)")


def shape_mismatches(item_dir, like) -> list[str]:
    """Leaves whose stored shape or dtype in the orbax item at `item_dir` differs from `like`'s, as
    'name: stored [..] dtype, expected [..] dtype' (empty when all match or the metadata is unreadable)."""
    import orbax.checkpoint as ocp

    try:
        meta = ocp.PyTreeCheckpointHandler().metadata(Path(item_dir).absolute())
        stored = leaves(getattr(meta, "tree", meta))
    except Exception:  # missing or damaged metadata: the restore itself reports the problem
        return []
    out = []
    for name, a in leaves(like).items():
        s = stored.get(name)
        if s is None:
            out.append(f"{name}: missing")
        elif tuple(s.shape) != tuple(a.shape) or np.dtype(s.dtype) != np.dtype(a.dtype):
            out.append(f"{name}: stored {list(s.shape)} {np.dtype(s.dtype)}, "
                       f"expected {list(a.shape)} {np.dtype(a.dtype)}")
    return out


def load_run(path, dtype=None, step: int | None = None) -> tuple[ModelConfig, dict, str | None]:
    """(config, params, tokenizer.json path or None) of a run at `step` (default: the latest).
    With `dtype`, float params are cast and the config's dtype and param_dtype set to it. A checkpoint
    that does not fit config.json or fails its checksums raises CheckpointError naming it."""
    import orbax.checkpoint as ocp

    path = Path(path)
    cfg = read_model_config(path)
    steps = checkpoint_steps(path)
    if not steps:
        raise FileNotFoundError(f"{path / CHECKPOINTS}: no complete checkpoint")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{path / CHECKPOINTS}: no checkpoint at step {step}; available: {steps}")
    try:
        target = abstract(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    except Exception as e:  # a config that validates yet cannot build a model
        raise ConfigError(f"{path / 'config.json'}: cannot build the model: {type(e).__name__}: {e}") from None
    where = path / CHECKPOINTS / str(step)
    wrong = shape_mismatches(where / PARAMS, target)
    if wrong:
        raise CheckpointError(f"{where}: cannot restore params for the model in {path / 'config.json'}: "
                              f"the checkpoint holds another model ({'; '.join(wrong[:4])})")
    try:
        with ocp.StandardCheckpointer() as reader:
            params = reader.restore(where.absolute() / PARAMS, target)
        meta = {}
        if (where / META).is_dir():
            with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader:
                meta = reader.restore(where.absolute() / META)
    except Exception as e:  # orbax raises many types for missing files, bad shapes and corrupt data
        raise CheckpointError(f"{where}: cannot restore params for the model in "
                              f"{path / 'config.json'}: {type(e).__name__}: {e}") from e
    meta = meta if isinstance(meta, dict) else {}
    sums = meta.get("checksums")
    verify(params, sums.get(PARAMS) if isinstance(sums, dict) else sums, f"{where}/{PARAMS}")
    if dtype is not None:
        name = jnp.dtype(dtype).name
        params = jax.tree.map(lambda a: a.astype(name) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
        cfg = cfg.replace(dtype=name, param_dtype=name)
    tok = path / "tokenizer.json"
    return cfg, params, str(tok) if tok.is_file() else None

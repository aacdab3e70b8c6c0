"""Read the params of our training runs: a directory with config.json ({"model": ..., "train": ...,
"data": ...}) and orbax checkpoints/<step>/{params, opt_state, meta}. The training side writes them."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.model import init_params
from minimal_lm.safetensors_io import CheckpointError

CHECKPOINTS = "checkpoints"
PARAMS, OPT_STATE, META = "params", "opt_state", "meta"


def refuse_file_as_dir(path, flag: str = "--out") -> Path:
    """`path` as a Path; ValueError if a file is there where a directory goes (the file is left as is)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, expected a directory (the file is left as is)")
    return path


def write_atomic(path, text: str) -> None:
    """Write via a temporary file and a rename, so a kill leaves the old or the new file, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_log(path) -> list[dict]:
    """JSON lines of a run's append-only log (metrics.jsonl, disruption.jsonl); a cut-off last line (a
    killed run) is skipped, damage elsewhere raises naming the line; a missing file reads as empty."""
    path = Path(path)
    lines = [s for s in path.read_text().splitlines() if s.strip()] if path.is_file() else []
    out = []
    for i, s in enumerate(lines):
        try:
            out.append(json.loads(s))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}, line {i + 1}: not valid JSON: {s[:80]!r}") from None
    return out


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
        with checkpoint_manager(path) as mngr:
            items = {PARAMS: ocp.args.StandardRestore(target)}
            if (where / META).is_dir():
                items[META] = ocp.args.JsonRestore()
            got = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for missing files, bad shapes and corrupt data
        raise CheckpointError(f"{where}: cannot restore params for the model in "
                              f"{path / 'config.json'}: {type(e).__name__}: {e}") from e
    params = got[PARAMS]
    meta = got[META] if META in items and isinstance(got[META], dict) else {}
    sums = meta.get("checksums")
    verify(params, sums.get(PARAMS) if isinstance(sums, dict) else sums, f"{where}/{PARAMS}")
    if dtype is not None:
        name = jnp.dtype(dtype).name
        params = jax.tree.map(lambda a: a.astype(name) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
        cfg = cfg.replace(dtype=name, param_dtype=name)
    tok = path / "tokenizer.json"
    return cfg, params, str(tok) if tok.is_file() else None

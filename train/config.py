"""A run's config: model, train and data sections, loaded from a small Python file exposing `CONFIG`,
changed by dotted `key=value` overrides that are parsed and type-checked against the dataclass field."""
from __future__ import annotations

import dataclasses
import json
import runpy
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minimal_lm.config import ConfigError, ModelConfig, build_dataclass

DATA_KINDS = ("synthetic", "shards")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and bookkeeping. Step numbers count completed optimizer updates."""

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at `steps`
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clip; 0 turns it off
    skip_nonfinite: int = 0  # skip up to this many non-finite steps in a row (state unchanged); 0: stop at one
    seed: int = 0  # parameter init
    eval_every: int = 100  # 0: only at the end
    eval_batches: int = 4
    log_every: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0: off)
    stop_after: int = 0  # stop at this step without changing the schedule (0: run to `steps`)
    overwrite: bool = False  # start over in a run directory that holds another run
    mesh_data: int = 1  # devices along the mesh's data axis (batches split)
    mesh_fsdp: int = 0  # devices along fsdp (params, optimizer state and batches split); 0: all the rest
    progress: bool = True

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "eval_batches", "log_every", "checkpoint_every",
                     "keep_checkpoints", "mesh_data"):
            _check(f"train.{name}", getattr(self, name), lambda v: v > 0, "a positive integer")
        for name in ("warmup_steps", "eval_every", "keep_every", "stop_after", "seed", "mesh_fsdp"):
            _check(f"train.{name}", getattr(self, name), lambda v: v >= 0, "an integer >= 0")
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"train.warmup_steps={self.warmup_steps}: expected fewer than train.steps={self.steps}")
        for name in ("lr", "b1", "b2", "eps", "min_lr_ratio", "weight_decay", "grad_clip"):
            _check(f"train.{name}", getattr(self, name), lambda v: v >= 0, "a number >= 0", float)
        _check("train.skip_nonfinite", self.skip_nonfinite, lambda v: v >= 0, "an integer >= 0")


CONTROL_KEYS = frozenset(f"train.{k}" for k in (
    "eval_every", "eval_batches", "log_every", "checkpoint_every", "keep_checkpoints", "keep_every",
    "stop_after", "overwrite", "progress", "skip_nonfinite", "mesh_data", "mesh_fsdp"))
"""Keys that do not change the trained params: a run may resume with different values."""


@dataclass(frozen=True)
class DataConfig:
    """Where batches come from. Batch `step` is a pure function of (seed, step)."""

    kind: str = "synthetic"  # synthetic | shards
    path: str = ""  # shards: a directory written by `python -m train prepare`
    seed: int = 0
    num_facts: int = 64  # synthetic: size of the fixed table of made-up facts
    facts_seed: int = 0  # synthetic: the facts table (keep it to evaluate a run's memorised facts)
    passkey_digits: int = 5  # synthetic: digits of a pass key
    recall_pairs: int = 4  # synthetic: pairs per "Pairs:" line, 0 to 8 (0: no pairs lines)

    def __post_init__(self):
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"data.kind={self.kind!r}: expected one of {', '.join(DATA_KINDS)}")
        if self.kind == "synthetic" and self.path:
            raise ConfigError(f"data.path={self.path!r} is set but data.kind='synthetic' does not read it: "
                              "add data.kind=shards to train on it, or clear data.path")
        if self.kind == "shards" and not self.path:
            raise ConfigError("data.path is empty: data.kind='shards' needs a directory written by "
                              "`python -m train prepare`")
        for name, least, most in (("num_facts", 1, 50_000), ("passkey_digits", 1, 1000), ("recall_pairs", 0, 8)):
            _check(f"data.{name}", getattr(self, name), lambda v: least <= v <= most,
                   f"an integer from {least} to {most}")
        _check("data.seed", self.seed, lambda v: v >= 0, "an integer >= 0")
        _check("data.facts_seed", self.facts_seed, lambda v: v >= 0, "an integer >= 0")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        if self.train.seq_len > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len={self.train.seq_len} exceeds model.max_seq_len="
                              f"{self.model.max_seq_len}; raise model.max_seq_len or lower train.seq_len")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "run config") -> "RunConfig":
        if not isinstance(d, dict) or set(d) != {"model", "train", "data"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"{where}: expected sections model, train, data; got {got}")
        parts = (ModelConfig.from_dict(d["model"], f"{where}: model"),
                 build_dataclass(TrainConfig, d["train"], f"{where}: train"), build_dataclass(DataConfig, d["data"], f"{where}: data"))
        try:
            return cls(*parts)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Run the Python file at `path`, take its `CONFIG`, apply `key=value` overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        cfg = runpy.run_path(str(path)).get("CONFIG")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"{path}: expected a module-level `CONFIG = RunConfig(...)`, got {type(cfg).__name__}")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `a.b=value` strings; all changes to one dataclass are applied together, then validated."""
    changes: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.steps=200")
        _insert(changes, RunConfig, key.split("."), text, key)
    return _apply(cfg, changes, "")


def _insert(changes, cls, parts, text, key, prefix=""):
    hints = typing.get_type_hints(cls)
    name = parts[0]
    if name not in hints:
        valid = ", ".join(prefix + n for n in hints)
        raise ConfigError(f"unknown key {key!r}; valid keys{' under ' + prefix[:-1] if prefix else ''}: {valid}")
    hint = hints[name]
    if len(parts) == 1:
        if isinstance(changes.get(name), dict):
            raise ConfigError(f"{key}: set both as a whole and by sub-keys")
        changes[name] = parse_value(text, hint, key)
        return
    sub = _dataclass_of(hint)
    if sub is None:
        raise ConfigError(f"unknown key {key!r}: {prefix}{name} ({_type_name(hint)}) has no sub-keys")
    if name in changes and not isinstance(changes[name], dict):
        raise ConfigError(f"{key}: {prefix}{name} is set both as a whole and by sub-keys")
    _insert(changes.setdefault(name, {}), sub, parts[1:], text, key, f"{prefix}{name}.")


def _apply(obj, changes, prefix):
    kw = {}
    for name, value in changes.items():
        if isinstance(value, dict):
            child = getattr(obj, name)
            if child is None:
                child = _dataclass_of(typing.get_type_hints(type(obj))[name])()
            value = _apply(child, value, f"{prefix}{name}.")
        kw[name] = value
    try:
        return dataclasses.replace(obj, **kw)
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if not prefix or msg.startswith(prefix) else f"{prefix[:-1]}: {msg}") from None


def parse_value(text: str, hint, key: str):
    """Parse `text` as the type `hint` of field `key`; a ConfigError says what was expected."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        (hint,) = [a for a in args if a is not type(None)]
    try:
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint is str:
            return text
        if dataclasses.is_dataclass(hint):
            return build_dataclass(hint, json.loads(text), key)
    except (ValueError, json.JSONDecodeError):
        raise ConfigError(f"{key}={text!r}: expected {_type_name(hint)}") from None
    raise ConfigError(f"{key}: fields of type {_type_name(hint)} cannot be set from the command line")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict, new: dict, ignore=CONTROL_KEYS) -> list[str]:
    """Dotted keys whose values differ between two `to_dict()` configs, as 'key: old -> new'."""
    a, b = flatten(old), flatten(new)
    keys = sorted((set(a) | set(b)) - set(ignore))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in keys if a.get(k) != b.get(k)]


def _dataclass_of(hint):
    for h in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(h):
            return h
    return None


def _type_name(hint):
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    if dataclasses.is_dataclass(hint):
        return f"a JSON object with keys {', '.join(f.name for f in dataclasses.fields(hint))}"
    return names.get(hint, str(hint))


def _check(key, value, ok, expected, kind=int):
    good_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not good_type or not ok(value):
        raise ConfigError(f"{key}={value!r}: expected {expected}")

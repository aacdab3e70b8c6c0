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

DATA_KINDS = ("synthetic", "shards", "stdlib")


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

    kind: str = "synthetic"  # synthetic | shards | stdlib (the running Python's standard library, train/stdlib.py)
    path: str = ""  # shards: a directory written by `python -m train prepare`
    seed: int = 0
    num_facts: int = 64  # synthetic: size of the fixed table of made-up facts
    facts_seed: int = 0  # synthetic: the facts table (keep it to evaluate a run's memorised facts)
    passkey_digits: int = 5  # synthetic: digits of a pass key
    recall_pairs: int = 4  # synthetic: pairs per "Pairs:" line, 0 to 8 (0: no pairs lines)
    vocab_size: int = 2048  # stdlib: BPE vocabulary trained on the train files (model.vocab_size must hold it)
    val_fraction: float = 0.05  # stdlib: share of files held out (chosen by a hash of each file's path)
    max_files: int = 0  # stdlib: keep only the first N files of the sorted order (0: all)
    max_bytes: int = 0  # stdlib: keep files of the sorted order while their bytes stay within this (0: all)
    stdlib_tests: bool = False  # stdlib: include the test directories (test, tests, idle_test)
    cache_dir: str = ""  # stdlib: where corpora are cached ("": $MINIMAL_LM_CACHE or ~/.cache/minimal_lm)

    def __post_init__(self):
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"data.kind={self.kind!r}: expected one of {', '.join(DATA_KINDS)}")
        if self.kind == "synthetic" and self.path:
            raise ConfigError(f"data.path={self.path!r} is set but data.kind='synthetic' does not read it: "
                              "add data.kind=shards to train on it, or clear data.path")
        if self.kind == "stdlib" and self.path:
            raise ConfigError(f"data.path={self.path!r} is set but data.kind='stdlib' builds its own corpus: clear "
                              "data.path (data.cache_dir says where the corpus is cached)")
        if self.kind == "shards" and not self.path:
            raise ConfigError("data.path is empty: data.kind='shards' needs a directory written by "
                              "`python -m train prepare`")
        for name, least, most in (("num_facts", 1, 50_000), ("passkey_digits", 1, 1000), ("recall_pairs", 0, 8)):
            _check(f"data.{name}", getattr(self, name), lambda v: least <= v <= most,
                   f"an integer from {least} to {most}")
        _check("data.seed", self.seed, lambda v: v >= 0, "an integer >= 0")
        _check("data.vocab_size", self.vocab_size, lambda v: 258 <= v <= 1 << 16, "an integer from 258 to 65536")
        _check("data.val_fraction", self.val_fraction, lambda v: 0 < v < 1, "a number between 0 and 1", float)
        for name in ("max_files", "max_bytes"):
            _check(f"data.{name}", getattr(self, name), lambda v: v >= 0, "an integer >= 0 (0: no cap)")
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
        if self.data.kind == "stdlib" and self.data.vocab_size > self.model.vocab_size:
            raise ConfigError(f"data.vocab_size={self.data.vocab_size} exceeds model.vocab_size="
                              f"{self.model.vocab_size}: the model must hold the stdlib corpus's vocabulary; set "
                              f"model.vocab_size="
                              f"{self.data.vocab_size} or lower data.vocab_size")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "run config") -> "RunConfig":
        if not isinstance(d, dict) or set(d) != {"model", "train", "data"}:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ConfigError(f"{where}: expected sections model, train, data; got {got}")
        parts = (ModelConfig.from_dict(d["model"], f"{where}: model"),
                 build_dataclass(TrainConfig, d["train"], f"{where}: train"),
                 build_dataclass(DataConfig, d["data"], f"{where}: data"))
        try:
            return cls(*parts)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def load_config(spec: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """The RunConfig `CONFIG` of the Python file `spec` (`path.py:NAME` picks another name), with dotted
    `key=value` overrides applied."""
    return apply_overrides(load_python(spec, RunConfig, "CONFIG"), overrides)


# ---- the one config loader and override parser: run configs here, the study's (probes.study) too -------


def load_python(spec: str | Path, cls: type, name: str):
    """Run the Python file `spec` and return its module-level `name`, which must be a `cls`; `path.py:NAME`
    in `spec` picks another name. A ConfigError names the file."""
    head, sep, tail = str(spec).rpartition(":")
    path = Path(spec)
    if sep and tail.isidentifier() and Path(head).suffix == ".py":
        path, name = Path(head), tail
    if not path.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        obj = runpy.run_path(str(path)).get(name)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(obj, cls):
        raise ConfigError(f"{path}: expected a module-level `{name} = {cls.__name__}(...)`, got {type(obj).__name__}")
    return obj


def apply_overrides(cfg, overrides: typing.Sequence[str], *, sections: dict[str, str] | None = None):
    """Apply dotted `key=value` strings to the frozen dataclass `cfg` (a RunConfig, or a study). Each value
    is parsed as its field's type (parse_value); all changes to one dataclass are applied together, then
    validated. `sections` maps a key's first part to the field path it sets ("" for cfg's own fields): the
    study's `study.KEY` are its own fields and `model.`, `train.`, `data.` its base run config's."""
    changes: dict = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.steps=200")
        node, cls, parts, prefix, hidden = changes, type(cfg), key.split("."), "", set()
        if sections is not None:
            if parts[0] not in sections:
                raise ConfigError(f"unknown key {key!r}; valid keys: {', '.join(sections)}")
            path = [p for p in sections[parts[0]].split(".") if p]
            for name in path[:-1]:
                cls, node = _dataclass_of(typing.get_type_hints(cls)[name]), node.setdefault(name, {})
            if path:
                parts = path[-1:] + parts[1:]
            else:
                parts, prefix = parts[1:], parts[0] + "."
                hidden = {p.split(".")[0] for p in sections.values() if p}
                if not parts:
                    raise ConfigError(f"override {item!r}: expected {prefix}KEY=value")
        _insert(node, cls, parts, text, key, prefix, hidden)
    shown = {}  # field path -> the key prefix the user wrote for it, where sections rename it
    for head, path in (sections or {}).items():
        parts = [p for p in path.split(".") if p]
        shown |= {".".join(parts[:i]) + "." if i else "": "" for i in range(len(parts))}
        if parts:
            shown[path + "."] = head + "."
    return _apply(cfg, changes, "", shown)


def _insert(changes, cls, parts, text, key, prefix="", hidden=()):
    hints = {n: h for n, h in typing.get_type_hints(cls).items() if n not in hidden}
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


def _apply(obj, changes, path, shown):
    """`obj` with `changes` (a tree of field values) applied; errors are prefixed with the key the user
    wrote (`shown` maps a field path to it where sections rename it)."""
    kw = {}
    for name, value in changes.items():
        if isinstance(value, dict):
            child = getattr(obj, name)
            if child is None:
                child = _dataclass_of(typing.get_type_hints(type(obj))[name])()
            value = _apply(child, value, f"{path}{name}.", shown)
        kw[name] = value
    try:
        return dataclasses.replace(obj, **kw)
    except ConfigError as e:
        msg, prefix = str(e), shown.get(path, path)
        raise ConfigError(msg if not prefix or msg.startswith(prefix) else f"{prefix[:-1]}: {msg}") from None


def parse_value(text: str, hint, key: str):
    """Parse `text` as the type `hint` of field `key`: none/null for an optional field, true/false (yes/no,
    1/0), numbers, strings, a tuple as comma-separated items, a dataclass as a JSON object. A ConfigError
    says what was expected."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        try:
            return tuple(parse_value(t.strip(), typing.get_args(hint)[0], key) for t in text.split(",") if t.strip())
        except ConfigError:
            raise ConfigError(f"{key}={text!r}: expected {_type_name(hint)}") from None
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


def config_diff(old: dict, new: dict, ignore=CONTROL_KEYS, defaults: dict | None = None) -> list[str]:
    """Dotted keys whose values differ between two `to_dict()` configs, as 'key: old -> new'. A key absent
    from `old` reads as its value in `defaults` (a `to_dict()` of the default config): a config written
    before the key existed ran with its default."""
    a, b = {**flatten(defaults or {}), **flatten(old)}, flatten(new)
    keys = sorted((set(a) | set(b)) - set(ignore))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in keys if a.get(k) != b.get(k)]


def _dataclass_of(hint):
    for h in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(h):
            return h
    return None


def config_keys(cfg, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, what it takes, value) of every key an override can set in the dataclass `cfg`, nested
    dataclasses expanded (a None one is listed whole)."""
    out = []
    for name, hint in typing.get_type_hints(type(cfg)).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            out += config_keys(value, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", _type_name(hint), value))
    return out


def _type_name(hint):
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return f"{_type_name(inner)} or none"
    if typing.get_origin(hint) is tuple and args[1:] == (Ellipsis,):
        return f"comma-separated {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if dataclasses.is_dataclass(hint):
        return f"a JSON object with keys {', '.join(f.name for f in dataclasses.fields(hint))}"
    return names.get(hint, str(hint))


def _check(key, value, ok, expected, kind=int):
    good_type = isinstance(value, (int, float)) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not good_type or not ok(value):
        raise ConfigError(f"{key}={value!r}: expected {expected}")

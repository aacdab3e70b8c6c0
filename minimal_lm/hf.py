"""Hugging Face checkpoint directories: load every supported family's weights exactly (the tables in
minimal_lm.hf_families), export RoPE models of the Llama form.

Weights keep HF's layout up to a transpose and a split of the head axis (rotate_half kept, no
constant folded in), so (layer, head, dim) in our captures is the same index in HF. Loading fills
one stacked array at a time from memory-mapped tensors, so peak host memory stays near the size of
the checkpoint in the target dtype.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import NamedTuple

import jax
import ml_dtypes
import numpy as np
from tqdm import tqdm

from minimal_lm import run_dir
from minimal_lm.config import DTYPES, ConfigError, ModelConfig
from minimal_lm.hf_config import family_of, from_hf_config, to_hf_config
from minimal_lm.hf_families import FAMILIES
from minimal_lm.safetensors_io import CheckpointError, SafetensorsFile, save_file
from minimal_lm.tokenizer import Tokenizer

_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Pretrained(NamedTuple):
    config: ModelConfig
    params: dict
    tokenizer: Tokenizer | None


def from_pretrained(path, dtype=None, revision: str | None = None, strict: bool = False) -> Pretrained:
    """Config, params and tokenizer from an HF checkpoint directory (or hub id, when huggingface_hub
    is installed) or from one of our run directories (latest checkpoint). `dtype` (e.g. "bfloat16")
    sets the params' and compute dtype; by default the checkpoint's own. `revision` (a branch, tag or
    commit of a hub id, e.g. Pythia's "step1000") is for hub ids only. Config keys we do not read are
    ignored with one warning, or refused with strict=True."""
    path = _resolve(os.fspath(path), revision)
    if run_dir.is_run_dir(path):
        cfg, params, tokenizer_json = run_dir.load_run(path, dtype=dtype)
        return Pretrained(cfg, params, Tokenizer.from_file(tokenizer_json) if tokenizer_json else None)
    cfg, params = load_hf(path, dtype, strict=strict)
    return Pretrained(cfg, params, Tokenizer.from_dir(path))


def load_hf(path, dtype=None, strict: bool = False) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from an HF checkpoint directory (config.json + safetensors). Config keys
    we do not read are ignored with one warning, or refused with strict=True."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face checkpoint directory)")
    with open(config_path, encoding="utf-8") as f:
        try:
            hf = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    cfg = from_hf_config(hf, config_path, strict=strict)
    family = family_of(hf, config_path)
    files = _with_base_prefix(_open_shards(path), family)
    top, layer = _layout(cfg, family)
    dtype = _dtype_name(dtype, files.get(top[0].name), top[0].name)
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    return cfg, _load_params(cfg, family, files, _NP_DTYPES[dtype], config_path)


def save_hf(path, cfg: ModelConfig, params: dict, tokenizer: Tokenizer | None = None, dtype: str | None = None):
    """Export a RoPE model to an HF directory (config.json, model.safetensors, tokenizer files) that
    transformers loads as LlamaForCausalLM (Qwen2ForCausalLM with q/k/v biases)."""
    dtype = dtype or cfg.param_dtype
    hf = to_hf_config(cfg, dtype)
    top, layer = _layout(cfg, FAMILIES[hf["architectures"][0]])
    tensors = {}
    for t in top:
        tensors[t.name] = _to_hf(_param(params, t.key), t.shape, t.perm, dtype)
    for t in layer:
        stacked = np.asarray(params["layers"][t.key])
        for i in range(cfg.num_layers):
            tensors[f"model.layers.{i}.{t.name}"] = _to_hf(stacked[i], t.shape, t.perm, dtype)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf, f, indent=2)
    if tokenizer is not None:
        tokenizer.save(path)


def _to_hf(a, shape, perm, dtype):
    return np.asarray(a).astype(_NP_DTYPES[dtype]).transpose(np.argsort(perm)).reshape(shape)


def _layout(cfg: ModelConfig, family):
    """The family's (top-level rows, per-layer rows) of hf_families.Tensor for cfg."""
    return family.tensors(cfg)


def _param(params, key):
    for part in key.split("."):
        params = params[part]
    return params


def _with_base_prefix(files, family):
    """Names as the model's own state dict has them: checkpoints saved from the base model (GPT-2's
    h.0..., OPT's decoder...) lack the base prefix."""
    if any(n.startswith(family.base_prefix) for n in files):
        return files
    return {n if n in family.heads else family.base_prefix + n: f for n, f in files.items()}


def _load_params(cfg, family, files, np_dtype, config_path):
    top, layer = _layout(cfg, family)
    L = cfg.num_layers
    if L > len(files):
        raise CheckpointError(f"{_where(files)}: {len(files)} tensors cannot hold the {L} layers of {config_path}")
    layer_name = (lambda i, t: f"{family.layer_prefix}{i}.{t.name}")
    expected = {t.name for t in top} | {layer_name(i, t) for t in layer for i in range(L)}
    ignored = {n for n in files if n.endswith("rotary_emb.inv_freq") or n.endswith(family.buffers or ("\0",))}
    head = family.heads[0]
    if cfg.tie_embeddings and head in files:
        embed = files.get(top[0].name)
        if embed is not None and not np.array_equal(files[head].get(head), embed.get(top[0].name)):
            raise CheckpointError(f"{config_path}: tie_word_embeddings=true but {head} differs from {top[0].name}")
        ignored.add(head)
    missing, extra = sorted(expected - set(files)), sorted(set(files) - expected - ignored)
    if missing:
        raise CheckpointError(f"{_where(files)}: missing tensor(s) {_few(missing)} required by {config_path}")
    if extra:
        raise CheckpointError(f"{_where(files)}: unexpected tensor(s) {_few(extra)} for the model in {config_path}")
    for name, t in [(t.name, t) for t in top] + [(layer_name(i, t), t) for t in layer for i in range(L)]:
        f = files[name]
        if f.shape(name) != t.shape:  # before allocating anything
            raise CheckpointError(f"{f.path}: tensor {name!r} has shape {list(f.shape(name))}, expected "
                                  f"{list(t.shape)} from {config_path}")

    def ours(t):
        split = list(t.split)
        if t.part is not None:
            del split[t.part[0]]
        return [split[p] for p in t.perm]

    def fill(out, name, t):
        f = files[name]
        if f.dtype(name).kind != "f" and f.dtype(name) != np.dtype(ml_dtypes.bfloat16):
            raise CheckpointError(f"{f.path}: tensor {name!r} has dtype {f.dtype(name)}, expected floating point")
        a = f.get(name).reshape(t.split)
        if t.part is not None:
            a = np.take(a, t.part[1], axis=t.part[0])
        out[...] = a.transpose(t.perm)
        bar.update()

    params = {"layers": {}, "position": {}}
    with tqdm(total=len(expected), desc="loading weights", unit="tensor", disable=None) as bar:
        for t in top:
            a = np.empty(ours(t), np_dtype)
            fill(a, t.name, t)
            *parents, leaf = t.key.split(".")
            node = params
            for p in parents:
                node = node[p]
            node[leaf] = jax.device_put(a)
        for t in layer:
            a = np.empty([L] + ours(t), np_dtype)
            for i in range(L):
                fill(a[i], layer_name(i, t), t)
            params["layers"][t.key] = jax.device_put(a)
            del a
    return params


def _open_shards(path) -> dict[str, SafetensorsFile]:
    """Tensor name -> the file that holds it, from model.safetensors or a sharded index."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: expected JSON with a 'weight_map' ({e!r})") from None
        shards = {}
        for shard in sorted(set(weight_map.values())):
            p = os.path.join(path, shard)
            if not os.path.exists(p):
                raise CheckpointError(f"{index}: shard {shard!r} is listed but missing from {path}")
            shards[shard] = SafetensorsFile(p)
        files = {}
        for shard, sf in shards.items():
            for name in sf.keys():
                if name in files:
                    raise CheckpointError(f"{sf.path}: tensor {name!r} is also in {files[name].path}")
                files[name] = sf
        for name, shard in weight_map.items():
            if files.get(name) is not shards[shard]:
                raise CheckpointError(f"{index}: maps {name!r} to {shard!r}, but that shard has no such tensor")
        return files
    if os.path.exists(single):
        sf = SafetensorsFile(single)
        return {name: sf for name in sf.keys()}
    pickled = sorted(os.path.basename(p) for ext in ("bin", "pt", "pth", "ckpt")
                     for p in glob.glob(os.path.join(path, f"*.{ext}")))
    if pickled:
        raise CheckpointError(
            f"{path}: only pickled weights ({', '.join(pickled)}); minimal_lm never unpickles. Convert them once, "
            "in an environment you trust, with: python -c \"import transformers as t; "
            "t.AutoModelForCausalLM.from_pretrained('IN').save_pretrained('OUT', safe_serialization=True)\"")
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def _dtype_name(dtype, embed_file, embed_name) -> str:
    if dtype is None:
        stored = embed_file.dtype(embed_name) if embed_file else np.dtype(np.float32)
        return next((k for k, v in _NP_DTYPES.items() if v == stored), "float32")
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    return name


def _resolve(path: str, revision: str | None = None) -> str:
    """A local directory as is; a hub id (at `revision`, default the main branch) downloaded through
    huggingface_hub (config, tokenizer and safetensors files only) into its cache."""
    if os.path.exists(path) and revision is not None:
        raise CheckpointError(f"{path}: revision={revision!r} is for Hugging Face Hub ids, but {path} is a local "
                              "path; pass a hub id (e.g. EleutherAI/pythia-160m) or drop the revision")
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
    if not _HUB_ID.fullmatch(path):
        raise CheckpointError(f"{path}: no such directory")
    at = path if revision is None else f"{path} (revision {revision})"
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(f"{at}: no such directory (to download it from the Hugging Face Hub, "
                              "pip install huggingface_hub)") from None
    try:
        local = huggingface_hub.snapshot_download(path, revision=revision,
                                                  allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    except Exception as e:
        raise CheckpointError(f"{at}: not a local directory, and downloading it from the Hugging Face Hub failed "
                              f"(offline, or no such repository or revision?): {type(e).__name__}: {e}") from None
    if not glob.glob(os.path.join(glob.escape(str(local)), "*.safetensors")):
        raise CheckpointError(f"{at}: the hub snapshot ({local}) has no .safetensors weights (only PyTorch .bin "
                              "files?); this loader reads safetensors only")
    return str(local)


def _where(files):
    return ", ".join(sorted({f.path for f in files.values()})) or "checkpoint"


def _few(names, n=8):
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")

"""Hugging Face checkpoint directories: load Llama/Mistral/Qwen2 weights exactly, export RoPE models.

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

from minimal_lm.config import DTYPES, ConfigError, ModelConfig
from minimal_lm.hf_config import from_hf_config, to_hf_config
from minimal_lm.safetensors_io import CheckpointError, SafetensorsFile, save_file
from minimal_lm.tokenizer import Tokenizer

_NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
              "float16": np.dtype(np.float16)}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Pretrained(NamedTuple):
    config: ModelConfig
    params: dict
    tokenizer: Tokenizer | None


def from_pretrained(path, dtype=None) -> Pretrained:
    """Config, params and tokenizer from an HF checkpoint directory (or hub id, when huggingface_hub
    is installed) or from one of our run directories (latest checkpoint). `dtype` (e.g. "bfloat16")
    sets the params' and compute dtype; by default the checkpoint's own."""
    path = _resolve(os.fspath(path))
    if _is_run_dir(path):
        from minimal_lm import run_dir

        cfg, params, tokenizer_json = run_dir.load_run(path, dtype=dtype)
        return Pretrained(cfg, params, Tokenizer.from_file(tokenizer_json) if tokenizer_json else None)
    cfg, params = load_hf(path, dtype)
    return Pretrained(cfg, params, Tokenizer.from_dir(path))


def load_hf(path, dtype=None) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) from an HF checkpoint directory (config.json + safetensors)."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face checkpoint directory)")
    with open(config_path, encoding="utf-8") as f:
        try:
            hf = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    cfg = from_hf_config(hf, config_path)
    files = _open_shards(path)
    dtype = _dtype_name(dtype, files.get("model.embed_tokens.weight"))
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    return cfg, _load_params(cfg, files, _NP_DTYPES[dtype], config_path)


def save_hf(path, cfg: ModelConfig, params: dict, tokenizer: Tokenizer | None = None, dtype: str | None = None):
    """Export a RoPE model to an HF directory (config.json, model.safetensors, tokenizer files) that
    transformers loads as LlamaForCausalLM (Qwen2ForCausalLM with q/k/v biases)."""
    dtype = dtype or cfg.param_dtype
    hf = to_hf_config(cfg, dtype)
    top, layer = _layout(cfg)
    tensors = {}
    for key, name, shape, split, perm in top:
        tensors[name] = _to_hf(params[key], shape, perm, dtype)
    for key, name, shape, split, perm in layer:
        stacked = np.asarray(params["layers"][key])
        for i in range(cfg.num_layers):
            tensors[f"model.layers.{i}.{name}"] = _to_hf(stacked[i], shape, perm, dtype)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf, f, indent=2)
    if tokenizer is not None:
        tokenizer.save(path)


def _to_hf(a, shape, perm, dtype):
    return np.asarray(a).astype(_NP_DTYPES[dtype]).transpose(np.argsort(perm)).reshape(shape)


def _layout(cfg: ModelConfig):
    """Rows (our key, HF name, HF shape, HF tensor split to, axis order of ours) for the top-level
    tensors and for each layer's tensors (name relative to model.layers.{i})."""
    D, H, K, E, F, V = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.hidden_dim, cfg.vocab_size
    top = [("embed", "model.embed_tokens.weight", (V, D), (V, D), (0, 1)),
           ("final_norm", "model.norm.weight", (D,), (D,), (0,))]
    if not cfg.tie_embeddings:
        top.append(("unembed", "lm_head.weight", (V, D), (V, D), (1, 0)))
    layer = [("wq", "self_attn.q_proj.weight", (H * E, D), (H, E, D), (2, 0, 1)),
             ("wk", "self_attn.k_proj.weight", (K * E, D), (K, E, D), (2, 0, 1)),
             ("wv", "self_attn.v_proj.weight", (K * E, D), (K, E, D), (2, 0, 1)),
             ("wo", "self_attn.o_proj.weight", (D, H * E), (D, H, E), (1, 2, 0)),
             ("w_gate", "mlp.gate_proj.weight", (F, D), (F, D), (1, 0)),
             ("w_up", "mlp.up_proj.weight", (F, D), (F, D), (1, 0)),
             ("w_down", "mlp.down_proj.weight", (D, F), (D, F), (1, 0)),
             ("attn_norm", "input_layernorm.weight", (D,), (D,), (0,)),
             ("mlp_norm", "post_attention_layernorm.weight", (D,), (D,), (0,))]
    if cfg.qkv_bias:
        layer += [("bq", "self_attn.q_proj.bias", (H * E,), (H, E), (0, 1)),
                  ("bk", "self_attn.k_proj.bias", (K * E,), (K, E), (0, 1)),
                  ("bv", "self_attn.v_proj.bias", (K * E,), (K, E), (0, 1))]
    return top, layer


def _load_params(cfg, files, np_dtype, config_path):
    top, layer = _layout(cfg)
    L = cfg.num_layers
    if L > len(files):
        raise CheckpointError(f"{_where(files)}: {len(files)} tensors cannot hold the {L} layers of {config_path}")
    expected = {name for _, name, *_ in top} | {f"model.layers.{i}.{name}" for _, name, *_ in layer for i in range(L)}
    ignored = {n for n in files if n.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings and "lm_head.weight" in files:
        embed = files.get("model.embed_tokens.weight")
        if embed is not None and not np.array_equal(files["lm_head.weight"].get("lm_head.weight"),
                                        embed.get("model.embed_tokens.weight")):
            raise CheckpointError(f"{config_path}: tie_word_embeddings=true but lm_head.weight differs from "
                                  "model.embed_tokens.weight")
        ignored.add("lm_head.weight")
    missing, extra = sorted(expected - set(files)), sorted(set(files) - expected - ignored)
    if missing:
        raise CheckpointError(f"{_where(files)}: missing tensor(s) {_few(missing)} required by {config_path}")
    if extra:
        raise CheckpointError(f"{_where(files)}: unexpected tensor(s) {_few(extra)} for the model in {config_path}")
    for _, name, shape, *_ in top + [(k, f"model.layers.{i}.{n}", *r) for k, n, *r in layer for i in range(L)]:
        f = files[name]
        if f.shape(name) != shape:  # before allocating anything
            raise CheckpointError(f"{f.path}: tensor {name!r} has shape {list(f.shape(name))}, expected "
                                  f"{list(shape)} from {config_path}")

    def fill(out, name, shape, split, perm):
        f = files[name]
        if f.dtype(name).kind != "f" and f.dtype(name) != np.dtype(ml_dtypes.bfloat16):
            raise CheckpointError(f"{f.path}: tensor {name!r} has dtype {f.dtype(name)}, expected floating point")
        out[...] = f.get(name).reshape(split).transpose(perm)
        bar.update()

    params = {"layers": {}, "position": {}}
    with tqdm(total=len(expected), desc="loading weights", unit="tensor", disable=None) as bar:
        for key, name, shape, split, perm in top:
            a = np.empty([split[p] for p in perm], np_dtype)
            fill(a, name, shape, split, perm)
            params[key] = jax.device_put(a)
        for key, name, shape, split, perm in layer:
            a = np.empty([L] + [split[p] for p in perm], np_dtype)
            for i in range(L):
                fill(a[i], f"model.layers.{i}.{name}", shape, split, perm)
            params["layers"][key] = jax.device_put(a)
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


def _dtype_name(dtype, embed_file) -> str:
    if dtype is None:
        stored = embed_file.dtype("model.embed_tokens.weight") if embed_file else np.dtype(np.float32)
        return next((k for k, v in _NP_DTYPES.items() if v == stored), "float32")
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    return name


def _resolve(path: str) -> str:
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
    if not _HUB_ID.fullmatch(path):
        raise CheckpointError(f"{path}: no such directory")
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(f"{path}: no such directory (to download it from the Hugging Face Hub, "
                              "pip install huggingface_hub)") from None
    try:
        return huggingface_hub.snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    except Exception as e:
        raise CheckpointError(f"{path}: not a local directory, and downloading it from the Hugging Face Hub "
                              f"failed (offline?): {type(e).__name__}: {e}") from None


def _is_run_dir(path) -> bool:
    try:
        from minimal_lm import run_dir
    except ImportError:
        run_dir = None
    if run_dir is not None and hasattr(run_dir, "is_run_dir"):
        return run_dir.is_run_dir(path)
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return "model" in json.load(f) and os.path.isdir(os.path.join(path, "checkpoints"))
    except (OSError, json.JSONDecodeError):
        return False


def _where(files):
    return ", ".join(sorted({f.path for f in files.values()})) or "checkpoint"


def _few(names, n=8):
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")

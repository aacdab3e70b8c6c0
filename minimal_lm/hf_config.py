"""Hugging Face config.json <-> ModelConfig: the policy that accepts real files and never computes a
different function silently.

Every key is mapped by its family's table (minimal_lm.hf_families), or checked by value (the values
whose math we reproduce; any other value is an error naming the key), or ignored with one warning
naming the ignored keys: metadata, token ids, training-only settings, generation defaults.
`strict=True` turns that warning into an error.
"""
from __future__ import annotations

import math
import warnings

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.hf_families import COMMON_CHECKED, FAMILIES, Family
from minimal_lm.positions import rope_to_hf

ARCHITECTURES = {name: family.name for name, family in FAMILIES.items()}
SILENT = {"architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path",
          "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "attention_dropout", "hidden_dropout",
          "dropout", "activation_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "embed_dropout",
          "resid_dropout", "classifier_dropout", "layerdrop"}
"""Keys nearly every config has and no inference forward reads (metadata, token ids, dropout rates):
ignored without a warning, in strict mode too."""


class IgnoredConfigKeys(UserWarning):
    """A config.json holds keys that minimal_lm does not read (they do not change the forward)."""


def family_of(hf: dict, where: str = "config.json") -> Family:
    archs = hf.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ConfigError(f"{where}: architectures={archs!r}: expected a list of names")
    supported = [a for a in archs if a in FAMILIES]
    if not supported:
        raise ConfigError(f"{where}: architectures={archs!r} is not supported; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[supported[0]]


def from_hf_config(hf: dict, where: str = "config.json", strict: bool = False) -> ModelConfig:
    """ModelConfig for an HF config dict of a supported family. A math-changing key at a value we do not
    reproduce, or a value of the wrong type, raises a ConfigError naming the key; keys we do not read
    are listed in one IgnoredConfigKeys warning (a ConfigError with strict=True)."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    family = family_of(hf, where)
    checked = {**{k: v for k, v in COMMON_CHECKED.items() if k not in family.mapped}, **family.checked}
    ignored = sorted(set(hf) - family.mapped - set(checked) - SILENT)
    if ignored and strict:
        raise ConfigError(f"{where}: key(s) {', '.join(ignored)} are not read by minimal_lm ({family.name} "
                          "family); strict mode refuses them")
    _check_types(hf, where)
    for key, (allowed, why) in checked.items():
        if key in hf and not any(hf[key] is v if v is None or isinstance(v, bool) else hf[key] == v
                                 for v in allowed):
            raise ConfigError(f"{where}: {key}={hf[key]!r} is not supported ({why}; expected one of {allowed})")
    fields = family.read(hf, where)
    if fields.get("head_dim") and fields["head_dim"] * fields["num_heads"] == fields["d_model"]:
        fields["head_dim"] = None  # the default, so that v4 files (without it) and v5 rewrites compare equal
    try:
        cfg = ModelConfig(**fields)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if ignored:
        warnings.warn(IgnoredConfigKeys(f"{where}: ignoring key(s) {', '.join(ignored)} (not read by the "
                                        f"{family.name} family; pass strict=True to refuse them)"), stacklevel=2)
    return cfg


_POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "n_embd", "n_layer",
                  "n_head", "n_inner", "n_positions", "ffn_dim", "num_layers", "num_heads", "window_size",
                  "query_pre_attn_scalar", "word_embed_proj_dim")
_POSITIVE_NUMBERS = ("rms_norm_eps", "initializer_range", "rope_theta", "layer_norm_epsilon", "layer_norm_eps",
                     "init_std", "rotary_emb_base", "rotary_pct", "partial_rotary_factor", "attn_logit_softcapping",
                     "final_logit_softcapping")
_BOOLS = ("tie_word_embeddings", "use_sliding_window", "attention_bias", "mlp_bias", "use_parallel_residual",
          "enable_bias", "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "do_layer_norm_before")
_ROPE_INTS = ("original_max_position_embeddings",)
EXPORT_FIXED = ("norm", "norm_offset", "mlp", "activation", "out_bias", "mlp_bias", "parallel_residual",
                "sandwich_norms", "qk_norm", "embed_scale", "attn_scale", "attn_softcap", "final_softcap",
                "layer_windows", "position_offset")
"""Family fields that a Llama/Qwen2 config.json cannot express: export needs their defaults."""


def _check_types(hf, where):
    """Types and ranges of the keys we read, so that no bad value reaches the math."""
    def fail(key, value, expected):
        raise ConfigError(f"{where}: {key}={value!r}: expected {expected}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key in _POSITIVE_INTS:
        v = hf.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            fail(key, v, "a positive integer")
    v = hf.get("max_window_layers")
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        fail("max_window_layers", v, "an integer >= 0")
    for key in _POSITIVE_NUMBERS:
        if hf.get(key) is not None and not (number(hf[key]) and hf[key] > 0):
            fail(key, hf[key], "a positive number")
    for key in _BOOLS:
        if hf.get(key) is not None and not isinstance(hf[key], bool):
            fail(key, hf[key], "true or false")
    types = hf.get("layer_types")
    if types is not None and (not isinstance(types, list) or not all(isinstance(t, str) for t in types)):
        fail("layer_types", types, "a list of names")
    for key in ("rope_parameters", "rope_scaling"):
        rope = hf.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict):
            fail(key, rope, "a mapping")
        for k, v in rope.items():
            if k in ("rope_type", "type"):
                if not isinstance(v, str):
                    fail(f"{key}.{k}", v, "a name")
            elif k in _ROPE_INTS:
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    fail(f"{key}.{k}", v, "a positive integer")
            elif not isinstance(v, dict) and not (number(v) and v > 0):
                fail(f"{key}.{k}", v, "a positive number")


def to_hf_config(cfg: ModelConfig, dtype: str | None = None) -> dict:
    """An HF config.json for `cfg`: LlamaForCausalLM, or Qwen2ForCausalLM when q/k/v have biases
    (HF Llama's attention_bias would also add an o_proj bias). Only RoPE models of the Llama form
    (the defaults of every family field) export."""
    plain = ModelConfig(vocab_size=cfg.vocab_size)
    changed = [f for f in EXPORT_FIXED if getattr(cfg, f) != getattr(plain, f)]
    if changed:
        values = ", ".join(f"{f}={getattr(cfg, f)!r}" for f in changed)
        raise ConfigError(f"export writes Llama/Qwen2 checkpoints; {values} has no equivalent there")
    rope = rope_to_hf(cfg)
    dtype = dtype or cfg.param_dtype
    hf = {
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head,
        "intermediate_size": cfg.hidden_dim, "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings, "hidden_act": "silu",
        "initializer_range": cfg.init_std, "dtype": dtype, "torch_dtype": dtype, "use_cache": True, **rope,
    }
    if cfg.qkv_bias:
        hf.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False,
                  sliding_window=None, max_window_layers=cfg.num_layers,
                  layer_types=["full_attention"] * cfg.num_layers)
    else:
        hf.update(architectures=["LlamaForCausalLM"], model_type="llama", attention_bias=False, mlp_bias=False)
    return hf

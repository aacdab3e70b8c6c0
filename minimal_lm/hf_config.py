"""Hugging Face config.json <-> ModelConfig for Llama, Mistral and Qwen2 (penzai-style whitelist).

Every key is either mapped, known to be harmless, or checked to hold a value whose math we
reproduce; any other key raises a ConfigError naming it, so a checkpoint never loads into the
wrong function silently.
"""
from __future__ import annotations

import math

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.positions import rope_from_hf, rope_to_hf

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
_QKV_BIAS = {"llama": False, "mistral": False, "qwen2": True}
_DEFAULT_MAX_POS = {"llama": 2048, "mistral": 32768, "qwen2": 32768}

MAPPED = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "head_dim", "intermediate_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
          "rope_theta", "rope_scaling", "rope_parameters", "initializer_range"}
HARMLESS = {
    # metadata, token ids, training-only settings
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "use_cache", "attention_dropout", "pretraining_tp", "max_window_layers",
    "tokenizer_class", "id2label", "label2id", "num_labels", "problem_type", "finetuning_task",
    "task_specific_params", "prefix", "torchscript", "return_dict", "output_attentions",
    "output_hidden_states", "use_return_dict", "is_decoder", "is_encoder_decoder", "add_cross_attention",
    "tie_encoder_decoder", "chunk_size_feed_forward", "cross_attention_hidden_size", "pruned_heads",
    # generation defaults stored in old config files
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "tf_legacy_loss", "use_bfloat16",
}
REQUIRED_VALUES = {
    "hidden_act": (("silu", "swish"), "the SwiGLU MLP uses SiLU"),
    "mlp_bias": ((False, None), "the MLP has no biases"),
    "use_mrope": ((False, None), "multimodal RoPE is not supported"),
    "partial_rotary_factor": ((1.0, 1, None), "HF Llama rotates whole heads"),
}
"""Keys whose other values change the math: key -> (allowed values, why)."""
_POSITIVE_INTS = {"vocab_size": True, "hidden_size": True, "num_hidden_layers": True, "num_attention_heads": True,
                  "intermediate_size": True, "num_key_value_heads": False, "head_dim": False,
                  "max_position_embeddings": False, "sliding_window": False}
"""Integer sizes: key -> required."""
_POSITIVE_NUMBERS = ("rms_norm_eps", "initializer_range", "rope_theta")
_BOOLS = ("tie_word_embeddings", "use_sliding_window", "attention_bias")
_ROPE_INTS = ("original_max_position_embeddings",)


def from_hf_config(hf: dict, where: str = "config.json") -> ModelConfig:
    """ModelConfig for an HF Llama/Mistral/Qwen2 config dict; unknown or unsupported keys, and values
    of the wrong type or range, raise a ConfigError naming the key."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(hf).__name__}")
    archs = hf.get("architectures") or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise ConfigError(f"{where}: architectures={archs!r}: expected a list of names")
    supported = [a for a in archs if a in ARCHITECTURES]
    if not supported:
        raise ConfigError(f"{where}: architectures={archs!r} is not supported; expected one of "
                          f"{', '.join(ARCHITECTURES)}")
    family = ARCHITECTURES[supported[0]]
    checked = {"attention_bias", "sliding_window", "use_sliding_window", "layer_types"}
    unknown = sorted(set(hf) - MAPPED - HARMLESS - set(REQUIRED_VALUES) - checked)
    if unknown:
        raise ConfigError(f"{where}: key(s) {', '.join(unknown)} are not understood and may change the math; "
                          "supported keys are listed in minimal_lm.hf_config")
    _check_types(hf, where)
    for key, (allowed, why) in REQUIRED_VALUES.items():
        if key in hf and hf[key] not in allowed:
            raise ConfigError(f"{where}: {key}={hf[key]!r} is not supported ({why}; expected one of {allowed})")
    if family != "qwen2" and hf.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias=true (biases on q/k/v and o_proj) is not supported")
    max_pos = hf.get("max_position_embeddings") or _DEFAULT_MAX_POS[family]
    _check_sliding_window(hf, family, max_pos, where)
    fields = dict(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"], num_kv_heads=hf.get("num_key_value_heads"),
        head_dim=hf.get("head_dim"), mlp_dim=hf["intermediate_size"], max_seq_len=max_pos,
        norm_eps=float(hf.get("rms_norm_eps") or 1e-6), init_std=float(hf.get("initializer_range") or 0.02),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=_QKV_BIAS[family], **rope_from_hf({k: v for k, v in hf.items() if v is not None}, where))
    try:
        return ModelConfig(**fields)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _check_types(hf, where):
    """Types and ranges of the keys we read, so that no bad value reaches the math."""
    def fail(key, value, expected):
        raise ConfigError(f"{where}: {key}={value!r}: expected {expected}")

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key, required in _POSITIVE_INTS.items():
        v = hf.get(key)
        if v is None and not required:
            continue
        if key not in hf:
            raise ConfigError(f"{where}: missing required key {key!r}")
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
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


def _check_sliding_window(hf, family, max_pos, where):
    window = hf.get("sliding_window")
    if window is None or window >= max_pos:
        return
    if family == "qwen2":
        types = hf.get("layer_types")
        used = (any(t != "full_attention" for t in types) if types is not None else
                hf.get("use_sliding_window", False) and hf["num_hidden_layers"] > hf.get("max_window_layers", 0))
        if not used:
            return
    raise ConfigError(f"{where}: sliding_window={window} is in use (less than max_position_embeddings={max_pos}); "
                      "sliding-window attention is not supported")


def to_hf_config(cfg: ModelConfig, dtype: str | None = None) -> dict:
    """An HF config.json for `cfg`: LlamaForCausalLM, or Qwen2ForCausalLM when q/k/v have biases
    (HF Llama's attention_bias would also add an o_proj bias). Only RoPE models export."""
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

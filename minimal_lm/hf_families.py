"""One short mapping table per Hugging Face family: config keys -> ModelConfig fields, the keys whose
other values change the math (checked by value), and the weight names -> our params.

A family reads only the keys it lists in `mapped` or `checked`; minimal_lm.hf_config ignores every
other key with one warning (an error in strict mode). Weight tables keep HF's layout up to a transpose
and a split of the head axis, so (layer, head, dim) means the same in our captures as in HF's.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.positions import rope_from_hf

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
               "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
"""HF activation names whose function we compute (gelu_new and gelu_pytorch_tanh are the same tanh
approximation)."""

COMMON_CHECKED = {
    "quantization_config": ((None,), "quantized checkpoints are not supported (load the unquantized weights)"),
    "pretraining_tp": ((1, None), "tensor-parallel slicing of the projections is not reproduced"),
    "rope_interleaved": ((False, None), "only the rotate_half RoPE layout is implemented"),
    "use_mrope": ((False, None), "multimodal RoPE is not supported"),
    "add_cross_attention": ((False, None), "decoder-only models only"),
    "is_encoder_decoder": ((False, None), "decoder-only models only"),
    "attn_logit_softcapping": ((None,), "this family has no attention soft-cap"),
    "final_logit_softcapping": ((None,), "this family has no logit soft-cap"),
    "sliding_window": ((None,), "this family has no sliding window"),
    "use_sliding_window": ((False, None), "this family has no sliding window"),
    "qk_layernorm": ((False, None), "this family has no q/k norm"),
    "use_qk_norm": ((False, None), "this family has no q/k norm"),
}
"""Keys checked by value for every family that does not map them: key -> (values we reproduce, why)."""


class Tensor(NamedTuple):
    """One HF tensor (or one part of a fused one) -> one of our params.

    key: our param path ("embed", "position.pos_embed", or a layer key); name: the HF name (relative
    to `layer_prefix` for layer tensors); shape: HF's; split: the view of it whose axes `perm` orders
    into ours; part: (axis, index) of the split view taken first, for fused q/k/v tensors."""

    key: str
    name: str
    shape: tuple
    split: tuple
    perm: tuple
    part: tuple | None = None


def linear(key, name, out_shape, d_in):
    """torch.nn.Linear weight [prod(out), in] -> ours [in, *out]."""
    n = len(out_shape)
    return Tensor(key, name, (math.prod(out_shape), d_in), (*out_shape, d_in), (n, *range(n)))


def linear_heads_in(key, name, d_out, heads_shape):
    """Output projection weight [out, H*E] -> ours [H, E, out]."""
    return Tensor(key, name, (d_out, math.prod(heads_shape)), (d_out, *heads_shape), (1, 2, 0))


def conv1d(key, name, d_in, out_shape):
    """GPT-2 Conv1D weight [in, prod(out)] -> ours [in, *out] (already input-major)."""
    return Tensor(key, name, (d_in, math.prod(out_shape)), (d_in, *out_shape), tuple(range(1 + len(out_shape))))


def vector(key, name, shape):
    return Tensor(key, name, (math.prod(shape),), tuple(shape), tuple(range(len(shape))))


def norms(cfg, pairs):
    """Norm weights (and biases for LayerNorm) [D] for (our key, HF name without .weight) pairs."""
    rows = []
    for key, name in pairs:
        rows.append(vector(key, f"{name}.weight", (cfg.d_model,)))
        if cfg.norm == "layer":
            rows.append(vector(f"{key}_bias", f"{name}.bias", (cfg.d_model,)))
    return rows


def head_projections(cfg, q, k, v, o, bias: bool, out_bias: bool):
    """Separate q/k/v/o Linear layers (Llama, OPT, GPT-Neo, Gemma 2, Qwen)."""
    D, H, K, E = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head
    rows = [linear("wq", f"{q}.weight", (H, E), D), linear("wk", f"{k}.weight", (K, E), D),
            linear("wv", f"{v}.weight", (K, E), D), linear_heads_in("wo", f"{o}.weight", D, (H, E))]
    if bias:
        rows += [vector("bq", f"{q}.bias", (H, E)), vector("bk", f"{k}.bias", (K, E)),
                 vector("bv", f"{v}.bias", (K, E))]
    if out_bias:
        rows.append(vector("bo", f"{o}.bias", (D,)))
    return rows


def mlp_linears(cfg, up, down, gate=None, conv=False):
    D, F = cfg.d_model, cfg.hidden_dim
    weight = (lambda key, name, a, b: conv1d(key, name, a, (b,))) if conv else (
        lambda key, name, a, b: linear(key, name, (b,), a))
    rows = [weight("w_up", f"{up}.weight", D, F), weight("w_down", f"{down}.weight", F, D)]
    if gate:
        rows.append(weight("w_gate", f"{gate}.weight", D, F))
    if cfg.mlp_bias:
        rows += [vector("b_up", f"{up}.bias", (F,)), vector("b_down", f"{down}.bias", (D,))]
        if gate:
            rows.append(vector("b_gate", f"{gate}.bias", (F,)))
    return rows


class Family(NamedTuple):
    """How one HF architecture maps onto ModelConfig and our params."""

    name: str
    read: Callable[[dict, str], dict]  # (hf config, where) -> ModelConfig fields
    mapped: frozenset  # keys `read` consumes
    checked: dict  # key -> (values we reproduce, why)
    tensors: Callable[[ModelConfig], tuple[list, list]]  # cfg -> (top-level rows, per-layer rows)
    layer_prefix: str  # per-layer names are f"{layer_prefix}{i}.{name}"
    base_prefix: str  # the base model's prefix, which some checkpoints leave out
    heads: tuple = ("lm_head.weight",)  # top-level names outside the base model
    buffers: tuple = ()  # name suffixes of stored non-parameters (causal-mask buffers) to skip


def _get(hf, key, default=None):
    v = hf.get(key)
    return default if v is None else v


def activation(hf, key, where, default):
    name = _get(hf, key, default)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(f"{where}: {key}={name!r} is not supported; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _require(hf, where, *keys):
    for key in keys:
        if hf.get(key) is None:
            raise ConfigError(f"{where}: missing required key {key!r}")


def windows_from_layer_types(hf, where, window, num_layers):
    """Per-layer windows from HF's layer_types ("sliding_attention" / "full_attention")."""
    types = hf.get("layer_types")
    if len(types) != num_layers:
        raise ConfigError(f"{where}: layer_types has {len(types)} entries, expected num_hidden_layers={num_layers}")
    bad = sorted({t for t in types if t not in ("sliding_attention", "full_attention")})
    if bad:
        raise ConfigError(f"{where}: layer_types {', '.join(map(repr, bad))} are not supported; expected "
                          "'sliding_attention' or 'full_attention'")
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def _windows(windows, max_pos):
    """None when no window ever binds (every window 0 or at least max_pos)."""
    windows = tuple(0 if w >= max_pos else w for w in windows)
    return windows if any(windows) else None


# ---- Llama, Mistral, Qwen2, Qwen3: RMSNorm, SwiGLU, RoPE -----------------------------------------------

_LLAMA_MAPPED = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "initializer_range", "hidden_act", "attention_bias", "mlp_bias"})
_LLAMA_DEFAULT_MAX_POS = {"llama": 2048, "mistral": 32768, "qwen2": 32768, "qwen3": 40960}


def _read_llama_like(family):
    def read(hf, where):
        _require(hf, where, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size")
        max_pos = _get(hf, "max_position_embeddings", _LLAMA_DEFAULT_MAX_POS[family])
        attention_bias = bool(_get(hf, "attention_bias", False))
        fields = dict(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], num_kv_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim"), mlp_dim=hf["intermediate_size"], max_seq_len=max_pos,
            norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)), init_std=float(_get(hf, "initializer_range", 0.02)),
            tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
            activation=activation(hf, "hidden_act", where, "silu"),
            mlp_bias=bool(_get(hf, "mlp_bias", False)),
            **rope_from_hf({k: v for k, v in hf.items() if v is not None}, where))
        L = hf["num_hidden_layers"]
        if family == "qwen2":
            fields.update(qkv_bias=True)
        elif family == "qwen3":
            fields.update(qkv_bias=attention_bias, out_bias=attention_bias, qk_norm=True)
        else:
            fields.update(qkv_bias=attention_bias, out_bias=attention_bias)
        window = hf.get("sliding_window")
        if family == "mistral" and window is not None:
            fields["layer_windows"] = _windows((window,) * L, max_pos)
        elif family in ("qwen2", "qwen3") and window is not None and hf.get("use_sliding_window"):
            if hf.get("layer_types") is not None:
                windows = windows_from_layer_types(hf, where, window, L)
            else:
                first = _get(hf, "max_window_layers", 28)
                windows = tuple(window if i >= first else 0 for i in range(L))
            fields["layer_windows"] = _windows(windows, max_pos)
        return fields

    return read


def _llama_tensors(cfg):
    top = [Tensor("embed", "model.embed_tokens.weight", (cfg.vocab_size, cfg.d_model), (cfg.vocab_size, cfg.d_model),
                  (0, 1)), *norms(cfg, [("final_norm", "model.norm")])]
    if not cfg.tie_embeddings:
        top.append(linear("unembed", "lm_head.weight", (cfg.vocab_size,), cfg.d_model))
    layer = [*head_projections(cfg, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               cfg.qkv_bias, cfg.out_bias),
             *mlp_linears(cfg, "mlp.up_proj", "mlp.down_proj", gate="mlp.gate_proj"),
             *norms(cfg, [("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")])]
    if cfg.qk_norm:
        E = cfg.dim_per_head
        layer += [vector("q_norm", "self_attn.q_norm.weight", (E,)), vector("k_norm", "self_attn.k_norm.weight", (E,))]
    return top, layer


def _llama_family(name, extra_mapped=(), checked=None):
    return Family(name, _read_llama_like(name), _LLAMA_MAPPED | frozenset(extra_mapped), checked or {},
                  _llama_tensors, "model.layers.", "model.")


_QWEN_MAPPED = ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types")

# ---- Gemma 2: sandwich norms, (1 + w) RMSNorm, GeGLU, soft-caps, alternating sliding windows ----------

_GEMMA2_MAPPED = frozenset({
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "initializer_range", "hidden_activation", "hidden_act",
    "query_pre_attn_scalar", "sliding_window", "layer_types", "attn_logit_softcapping", "final_logit_softcapping"})


def _read_gemma2(hf, where):
    _require(hf, where, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    L, D = hf["num_hidden_layers"], hf["hidden_size"]
    max_pos = _get(hf, "max_position_embeddings", 8192)
    act_key = "hidden_activation" if hf.get("hidden_activation") is not None else "hidden_act"
    fields = dict(
        vocab_size=hf["vocab_size"], d_model=D, num_layers=L, num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads"), head_dim=_get(hf, "head_dim", 256),
        mlp_dim=hf["intermediate_size"], max_seq_len=max_pos, norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        init_std=float(_get(hf, "initializer_range", 0.02)), tie_embeddings=bool(_get(hf, "tie_word_embeddings", True)),
        activation=activation(hf, act_key, where, "gelu_pytorch_tanh"), norm_offset=1.0, sandwich_norms=True,
        embed_scale=math.sqrt(D), attn_scale=float(_get(hf, "query_pre_attn_scalar", 256)) ** -0.5,
        attn_softcap=hf.get("attn_logit_softcapping"), final_softcap=hf.get("final_logit_softcapping"),
        **rope_from_hf({k: v for k, v in hf.items() if v is not None}, where))
    window = hf.get("sliding_window")
    if window is not None:
        if hf.get("layer_types") is not None:
            windows = windows_from_layer_types(hf, where, window, L)
        else:
            windows = tuple(window if i % 2 == 0 else 0 for i in range(L))  # layers 0, 2, ... slide
        fields["layer_windows"] = _windows(windows, max_pos)
    return fields


def _gemma2_tensors(cfg):
    top, _ = _llama_tensors(cfg)
    layer = [*head_projections(cfg, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               False, False),
             *mlp_linears(cfg, "mlp.up_proj", "mlp.down_proj", gate="mlp.gate_proj"),
             *norms(cfg, [("attn_norm", "input_layernorm"), ("post_attn_norm", "post_attention_layernorm"),
                          ("mlp_norm", "pre_feedforward_layernorm"), ("post_mlp_norm", "post_feedforward_layernorm")])]
    return top, layer


# ---- GPT-2: learned positions, LayerNorm, GELU MLP, fused Conv1D q/k/v ----------------------------------

_GPT2_MAPPED = frozenset({"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                          "activation_function", "layer_norm_epsilon", "initializer_range", "tie_word_embeddings"})
_GPT2_CHECKED = {
    "scale_attn_weights": ((True, None), "scores are divided by sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": ((False, None), "no per-layer score scaling"),
}


def _read_gpt2(hf, where):
    _require(hf, where, "vocab_size", "n_embd", "n_layer", "n_head")
    D = hf["n_embd"]
    return dict(vocab_size=hf["vocab_size"], d_model=D, num_layers=hf["n_layer"], num_heads=hf["n_head"],
                mlp_dim=_get(hf, "n_inner", 4 * D), max_seq_len=_get(hf, "n_positions", 1024), position="learned",
                norm="layer", mlp="mlp", activation=activation(hf, "activation_function", where, "gelu_new"),
                qkv_bias=True, out_bias=True, mlp_bias=True, norm_eps=float(_get(hf, "layer_norm_epsilon", 1e-5)),
                init_std=float(_get(hf, "initializer_range", 0.02)),
                tie_embeddings=bool(_get(hf, "tie_word_embeddings", True)))


def _gpt2_tensors(cfg):
    D, H, E, V = cfg.d_model, cfg.num_heads, cfg.dim_per_head, cfg.vocab_size
    top = [Tensor("embed", "transformer.wte.weight", (V, D), (V, D), (0, 1)),
           Tensor("position.pos_embed", "transformer.wpe.weight", (cfg.max_seq_len, D), (cfg.max_seq_len, D), (0, 1)),
           *norms(cfg, [("final_norm", "transformer.ln_f")])]
    if not cfg.tie_embeddings:
        top.append(linear("unembed", "lm_head.weight", (V,), D))
    layer = [Tensor(key, "attn.c_attn.weight", (D, 3 * D), (D, 3, H, E), (0, 1, 2), (1, i))
             for i, key in enumerate(("wq", "wk", "wv"))]
    layer += [Tensor(key, "attn.c_attn.bias", (3 * D,), (3, H, E), (0, 1), (0, i))
              for i, key in enumerate(("bq", "bk", "bv"))]
    layer += [Tensor("wo", "attn.c_proj.weight", (D, D), (H, E, D), (0, 1, 2)), vector("bo", "attn.c_proj.bias", (D,)),
              *mlp_linears(cfg, "mlp.c_fc", "mlp.c_proj", conv=True),
              *norms(cfg, [("attn_norm", "ln_1"), ("mlp_norm", "ln_2")])]
    return top, layer


# ---- OPT: learned positions at offset 2, LayerNorm, ReLU MLP -------------------------------------------

_OPT_MAPPED = frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
                         "max_position_embeddings", "activation_function", "init_std", "tie_word_embeddings",
                         "enable_bias", "word_embed_proj_dim"})
_OPT_CHECKED = {
    "do_layer_norm_before": ((True, None), "post-norm OPT (opt-350m) is not implemented"),
    "_remove_final_layer_norm": ((False, None), "the final LayerNorm is applied"),
    "layer_norm_elementwise_affine": ((True, None), "LayerNorms have a weight and a bias"),
}


def _read_opt(hf, where):
    _require(hf, where, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim")
    D = hf["hidden_size"]
    if _get(hf, "word_embed_proj_dim", D) != D:
        raise ConfigError(f"{where}: word_embed_proj_dim={hf['word_embed_proj_dim']} differs from hidden_size={D}: "
                          "the embedding projections of opt-350m are not implemented")
    bias = bool(_get(hf, "enable_bias", True))
    return dict(vocab_size=hf["vocab_size"], d_model=D, num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], mlp_dim=hf["ffn_dim"],
                max_seq_len=_get(hf, "max_position_embeddings", 2048), position="learned", position_offset=2,
                norm="layer", mlp="mlp", activation=activation(hf, "activation_function", where, "relu"),
                qkv_bias=bias, out_bias=bias, mlp_bias=bias, norm_eps=1e-5, init_std=float(_get(hf, "init_std", 0.02)),
                tie_embeddings=bool(_get(hf, "tie_word_embeddings", True)))


def _opt_tensors(cfg):
    D, V = cfg.d_model, cfg.vocab_size
    P = cfg.max_seq_len + cfg.position_offset
    top = [Tensor("embed", "model.decoder.embed_tokens.weight", (V, D), (V, D), (0, 1)),
           Tensor("position.pos_embed", "model.decoder.embed_positions.weight", (P, D), (P, D), (0, 1)),
           *norms(cfg, [("final_norm", "model.decoder.final_layer_norm")])]
    if not cfg.tie_embeddings:
        top.append(linear("unembed", "lm_head.weight", (V,), D))
    layer = [*head_projections(cfg, "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                               cfg.qkv_bias, cfg.out_bias),
             *mlp_linears(cfg, "fc1", "fc2"),
             *norms(cfg, [("attn_norm", "self_attn_layer_norm"), ("mlp_norm", "final_layer_norm")])]
    return top, layer


# ---- GPT-Neo: learned positions, unscaled scores, alternating local attention ---------------------------

_NEO_MAPPED = frozenset({"vocab_size", "max_position_embeddings", "hidden_size", "num_layers", "num_heads",
                         "intermediate_size", "window_size", "activation_function", "attention_types",
                         "attention_layers", "layer_norm_epsilon", "initializer_range", "tie_word_embeddings"})


def _read_gpt_neo(hf, where):
    _require(hf, where, "vocab_size", "hidden_size", "num_layers", "num_heads")
    D, L = hf["hidden_size"], hf["num_layers"]
    layers = hf.get("attention_layers")
    if layers is None:
        types = _get(hf, "attention_types", [[["global", "local"], 12]])
        try:
            layers = [t for pattern, n in types for _ in range(n) for t in pattern]
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: attention_types={types!r}: expected [[[names...], repeats], ...]") from None
    if len(layers) != L or any(t not in ("global", "local") for t in layers):
        raise ConfigError(f"{where}: attention layers {layers!r}: expected {L} of 'global' or 'local'")
    max_pos = _get(hf, "max_position_embeddings", 2048)
    window = _get(hf, "window_size", 256)
    return dict(vocab_size=hf["vocab_size"], d_model=D, num_layers=L, num_heads=hf["num_heads"],
                mlp_dim=_get(hf, "intermediate_size", 4 * D), max_seq_len=max_pos, position="learned",
                norm="layer", mlp="mlp", activation=activation(hf, "activation_function", where, "gelu_new"),
                out_bias=True, mlp_bias=True, attn_scale=1.0, norm_eps=float(_get(hf, "layer_norm_epsilon", 1e-5)),
                init_std=float(_get(hf, "initializer_range", 0.02)),
                tie_embeddings=bool(_get(hf, "tie_word_embeddings", True)),
                layer_windows=_windows(tuple(window if t == "local" else 0 for t in layers), max_pos))


def _gpt_neo_tensors(cfg):
    top, _ = _gpt2_tensors(cfg)
    layer = [*head_projections(cfg, "attn.attention.q_proj", "attn.attention.k_proj", "attn.attention.v_proj",
                               "attn.attention.out_proj", False, True),
             *mlp_linears(cfg, "mlp.c_fc", "mlp.c_proj"),
             *norms(cfg, [("attn_norm", "ln_1"), ("mlp_norm", "ln_2")])]
    return top, layer


# ---- GPT-NeoX / Pythia: partial rotary, parallel residual, fused per-head q/k/v -------------------------

_NEOX_MAPPED = frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "hidden_act", "rotary_pct", "rotary_emb_base", "rope_theta",
                          "rope_scaling", "rope_parameters", "partial_rotary_factor", "max_position_embeddings",
                          "layer_norm_eps", "use_parallel_residual", "attention_bias", "tie_word_embeddings",
                          "initializer_range"})


def _read_gpt_neox(hf, where):
    _require(hf, where, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    rope = {k: v for k, v in hf.items() if v is not None}
    if not rope.get("rope_parameters"):  # transformers v4 spelling
        rope["rope_parameters"] = {
            "rope_type": "default", "rope_theta": _get(hf, "rotary_emb_base", _get(hf, "rope_theta", 10000)),
            "partial_rotary_factor": _get(hf, "rotary_pct", _get(hf, "partial_rotary_factor", 0.25))}
    bias = bool(_get(hf, "attention_bias", True))
    return dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
                max_seq_len=_get(hf, "max_position_embeddings", 2048), norm="layer", mlp="mlp",
                activation=activation(hf, "hidden_act", where, "gelu"), qkv_bias=bias, out_bias=bias, mlp_bias=True,
                parallel_residual=bool(_get(hf, "use_parallel_residual", True)),
                norm_eps=float(_get(hf, "layer_norm_eps", 1e-5)), init_std=float(_get(hf, "initializer_range", 0.02)),
                tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
                **rope_from_hf(rope, where, partial=True))


def _gpt_neox_tensors(cfg):
    D, H, E, V = cfg.d_model, cfg.num_heads, cfg.dim_per_head, cfg.vocab_size
    top = [Tensor("embed", "gpt_neox.embed_in.weight", (V, D), (V, D), (0, 1)),
           *norms(cfg, [("final_norm", "gpt_neox.final_layer_norm")])]
    if not cfg.tie_embeddings:
        top.append(linear("unembed", "embed_out.weight", (V,), D))
    layer = [Tensor(key, "attention.query_key_value.weight", (3 * D, D), (H, 3, E, D), (2, 0, 1), (1, i))
             for i, key in enumerate(("wq", "wk", "wv"))]
    if cfg.qkv_bias:
        layer += [Tensor(key, "attention.query_key_value.bias", (3 * D,), (H, 3, E), (0, 1), (1, i))
                  for i, key in enumerate(("bq", "bk", "bv"))]
    layer += [linear_heads_in("wo", "attention.dense.weight", D, (H, E))]
    if cfg.out_bias:
        layer.append(vector("bo", "attention.dense.bias", (D,)))
    layer += [*mlp_linears(cfg, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
              *norms(cfg, [("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")])]
    return top, layer


FAMILIES = {
    "LlamaForCausalLM": _llama_family("llama"),
    "MistralForCausalLM": _llama_family("mistral", ["sliding_window"]),
    "Qwen2ForCausalLM": _llama_family("qwen2", _QWEN_MAPPED),
    "Qwen3ForCausalLM": _llama_family("qwen3", _QWEN_MAPPED),
    "Gemma2ForCausalLM": Family("gemma2", _read_gemma2, _GEMMA2_MAPPED,
                                {"attention_bias": ((False, None), "Gemma 2 projections have no biases")},
                                _gemma2_tensors, "model.layers.", "model."),
    "GPT2LMHeadModel": Family("gpt2", _read_gpt2, _GPT2_MAPPED, _GPT2_CHECKED, _gpt2_tensors, "transformer.h.",
                              "transformer.", buffers=(".attn.bias", ".attn.masked_bias")),
    "OPTForCausalLM": Family("opt", _read_opt, _OPT_MAPPED, _OPT_CHECKED, _opt_tensors, "model.decoder.layers.",
                             "model."),
    "GPTNeoForCausalLM": Family("gpt_neo", _read_gpt_neo, _NEO_MAPPED, {}, _gpt_neo_tensors, "transformer.h.",
                                "transformer.", buffers=(".attn.attention.bias", ".attn.attention.masked_bias")),
    "GPTNeoXForCausalLM": Family("gpt_neox", _read_gpt_neox, _NEOX_MAPPED, {}, _gpt_neox_tensors, "gpt_neox.layers.",
                                 "gpt_neox.", heads=("embed_out.weight",),
                                 buffers=(".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")),
}
"""HF architecture name -> its family table."""

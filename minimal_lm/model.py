"""The decoder: params as a plain pytree (layers stacked on axis 0) and pure functions over it.

Shape suffixes: B batch, T query tokens, S key tokens (cache slots), D d_model, H heads,
K kv heads, E head_dim, F mlp hidden, V vocab, L layers.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.positions import scheme

SITES = ("q_proj", "k_proj", "q_pre", "k_pre", "q", "k", "v", "attn_scores", "attn_probs", "attn_out",
         "mlp_out", "resid")
"""Named sites in each layer. q_proj/k_proj: the projections ([B,T,H,E] / [B,T,K,E]); q_pre/k_pre: the
same after the q/k norm (Qwen3), before rotation: the paper's pre-RoPE Q and K (equal to q_proj/k_proj
without a q/k norm); q/k: after rotation (equal to q_pre/k_pre when nothing rotates); v: [B,T,K,E];
attn_scores: scaled (and soft-capped) scores plus any positional bias, masked entries at the dtype's
minimum, and attn_probs: their softmax, both [B,H,T,S] and computed only for a hook whose `sites` names
them; attn_out, mlp_out: what each branch adds to the residual; resid: the residual after the layer
([B,T,D])."""
SCORE_SITES = ("attn_scores", "attn_probs")

Intervention = Callable[[str, jax.Array, jax.Array], jax.Array]
"""(site, layer, x) -> x, layer a traced int32 scalar; see minimal_lm.hooks for hooks as pytrees."""
Capture = Callable[[str, jax.Array, jax.Array], Any]


class KVCache(NamedTuple):
    """Static-shape cache of keys and values. Slot s holds one token of every row; `valid` marks
    slots that hold real tokens (left padding stays invalid); `index` is the next slot to write."""

    k_LBSKE: jax.Array
    v_LBSKE: jax.Array
    valid_BS: jax.Array
    positions_BS: jax.Array
    index: jax.Array


class Output(NamedTuple):
    logits: jax.Array  # float32 [B, T, V] (or [B, 1, V] with last_only)
    captured: dict  # site -> capture result stacked over layers (leading axis L)
    cache: KVCache | None


def init_params(cfg: ModelConfig, key) -> dict:
    """Random params: normal(init_std); output projections scaled by 1/sqrt(2 * num_layers)."""
    L, D, H, K, E, F, V = (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head,
                           cfg.hidden_dim, cfg.vocab_size)
    k = iter(jax.random.split(key, 10))
    std, out_std = cfg.init_std, cfg.init_std / (2 * L) ** 0.5

    def normal(shape, s):
        return s * jax.random.normal(next(k), shape, jnp.float32)

    layers = {
        "attn_norm": jnp.ones((L, D)), "mlp_norm": jnp.ones((L, D)),
        "wq": normal((L, D, H, E), std), "wk": normal((L, D, K, E), std), "wv": normal((L, D, K, E), std),
        "wo": normal((L, H, E, D), out_std),
        "w_gate": normal((L, D, F), std), "w_up": normal((L, D, F), std), "w_down": normal((L, F, D), out_std),
    }
    if cfg.mlp == "mlp":
        del layers["w_gate"]
    if cfg.qkv_bias:
        layers.update(bq=jnp.zeros((L, H, E)), bk=jnp.zeros((L, K, E)), bv=jnp.zeros((L, K, E)))
    if cfg.out_bias:
        layers["bo"] = jnp.zeros((L, D))
    if cfg.mlp_bias:
        layers.update(b_up=jnp.zeros((L, F)), b_down=jnp.zeros((L, D)))
        if cfg.mlp == "glu":
            layers["b_gate"] = jnp.zeros((L, F))
    if cfg.sandwich_norms:
        layers.update(post_attn_norm=jnp.ones((L, D)), post_mlp_norm=jnp.ones((L, D)))
    if cfg.qk_norm:
        layers.update(q_norm=jnp.ones((L, E)), k_norm=jnp.ones((L, E)))
    norm_init = 1.0 - cfg.norm_offset  # every norm starts as the identity scale
    for name in [n for n in layers if n.endswith("_norm")]:
        layers[name] = norm_init * layers[name]
        if cfg.norm == "layer" and name not in ("q_norm", "k_norm"):
            layers[name + "_bias"] = jnp.zeros_like(layers[name])
    params = {"embed": normal((V, D), std), "layers": layers, "final_norm": norm_init * jnp.ones((D,)),
              "position": scheme(cfg).init(cfg, next(k))}
    if cfg.norm == "layer":
        params["final_norm_bias"] = jnp.zeros((D,))
    if not cfg.tie_embeddings:
        params["unembed"] = normal((D, V), std)
    return jax.tree.map(lambda a: a.astype(cfg.param_dtype), params)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
    shape = (cfg.num_layers, batch, length, cfg.kv_heads, cfg.dim_per_head)
    dtype = dtype or cfg.dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool),
                   jnp.zeros((batch, length), jnp.int32), jnp.zeros((), jnp.int32))


def rms_norm(x, weight, eps, offset=0.0):
    """Hugging Face's RMSNorm, normalised in float32: Llama's casts back, then scales by the weight;
    Gemma's (offset 1) scales by (1 + weight) in float32, then casts back."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if offset:
        return (x32 * (offset + weight.astype(jnp.float32))).astype(x.dtype)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


def layer_norm(x, weight, bias, eps):
    """torch.nn.LayerNorm over the last axis, in float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (y * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def norm(cfg: ModelConfig, p: dict, name: str, x):
    """The norm `name` of cfg's kind, with its params from p (p[name], and p[name + "_bias"])."""
    if cfg.norm == "layer":
        return layer_norm(x, p[name], p[name + "_bias"], cfg.norm_eps)
    return rms_norm(x, p[name], cfg.norm_eps, cfg.norm_offset)


ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


def dense(x, w, out_dtype=None):
    """x [..., K] @ w [K, N] (out_dtype: the accumulation and result dtype, as preferred_element_type). On CPU
    through a VJP whose weight gradient is an NN matmul of x^T made contiguous: XLA:CPU's fast dot kernel
    takes no transposed lhs, and x^T g by contracting x's rows ran at 33 GFLOP/s against 54 (one core,
    [2048, 384] x [2048, 1024], measured); the forward and the input gradient are the plain matmuls. x passes
    an optimization barrier first, so that the backward transposes x as stored rather than recomputing the
    elementwise ops that produced it in transposed order (the study's step 4% faster on one core)."""
    if jax.default_backend() == "cpu":
        return _dense_cpu(x, w, out_dtype)
    return jnp.matmul(x, w, preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_cpu(x, w, out_dtype):
    return jnp.matmul(x, w, preferred_element_type=out_dtype)


def _dense_cpu_fwd(x, w, out_dtype):
    x = jax.lax.optimization_barrier(x)
    return _dense_cpu(x, w, out_dtype), (x, w)


def _dense_cpu_bwd(out_dtype, res, g):
    x, w = res
    dx = jnp.matmul(g, w.T.astype(g.dtype)).astype(x.dtype)
    x_KM = jax.lax.optimization_barrier(x.reshape(-1, x.shape[-1]).T)
    dw = jnp.matmul(x_KM.astype(g.dtype), g.reshape(-1, g.shape[-1])).astype(w.dtype)
    return dx, dw


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


def mlp(cfg: ModelConfig, p: dict, h_BTD):
    act = ACTIVATIONS[cfg.activation]
    up_BTF = dense(h_BTD, p["w_up"]) + (p["b_up"] if cfg.mlp_bias else 0)
    if cfg.mlp == "glu":
        up_BTF = act(dense(h_BTD, p["w_gate"]) + (p["b_gate"] if cfg.mlp_bias else 0)) * up_BTF
    else:
        up_BTF = act(up_BTF)
    return dense(up_BTF, p["w_down"]) + (p["b_down"] if cfg.mlp_bias else 0)


def softcap(x, cap):
    return x if cap is None else cap * jnp.tanh(x / cap)


def wants(hook, site: str) -> bool:
    """Whether a hook asks for an optional site: it names it in a `sites` attribute (a static field of a
    pytree hook, so that whether the score path runs is part of the compiled program)."""
    return hook is not None and site in getattr(hook, "sites", ())


def attention_probs(q_BTHE, k_BSKE, bias, mask, scale, cap, site):
    """Explicit attention: scores [B,H,T,S] (scaled, soft-capped, biased, masked) and their float32
    softmax, each passed through `site`, as transformers' eager attention computes them."""
    B, T, H, E = q_BTHE.shape
    K = k_BSKE.shape[2]
    q_BTKGE = q_BTHE.reshape(B, T, K, H // K, E)
    scores_BHTS = jnp.einsum("btkge,bske->bkgts", q_BTKGE, k_BSKE).reshape(B, H, T, -1) * scale
    scores_BHTS = softcap(scores_BHTS, cap)
    if bias is not None:
        scores_BHTS = scores_BHTS + bias
    scores_BHTS = site("attn_scores", jnp.where(mask, scores_BHTS, jnp.finfo(scores_BHTS.dtype).min))
    probs_BHTS = jax.nn.softmax(scores_BHTS.astype(jnp.float32), axis=-1).astype(q_BTHE.dtype)
    return site("attn_probs", probs_BHTS)


def chunked_attention(q_BTHE, k_BTKE, v_BTKE, bias, mask, scale, chunk: int):
    """Causal self-attention (keys = the T queries' own tokens, no cache) by chunks of `chunk` queries, each
    against its causal prefix of keys only: about half the score work and memory of [B,H,T,T], with the
    explicit score path's float32 softmax. `mask` ([B,1,T,T] or None: causal) must itself be causal, as
    forward's is; `bias` is [B or 1, H, T, T] or None. What "chunked" attention runs (by default on CPU)."""
    B, T, H, E = q_BTHE.shape
    K = k_BTKE.shape[2]
    out = []
    for a in range(0, T, chunk):
        b = min(a + chunk, T)
        if mask is None:
            mask_TS = jnp.arange(b)[None, :] <= jnp.arange(a, b)[:, None]
            mask_c = mask_TS[None, None]
        else:
            mask_c = mask[:, :, a:b, :b]
        bias_c = None if bias is None else bias[..., a:b, :b]
        probs_BHTS = attention_probs(q_BTHE[:, a:b], k_BTKE[:, :b], bias_c, mask_c, scale, None, lambda _, x: x)
        probs_BKGTS = probs_BHTS.reshape(B, K, H // K, b - a, b)
        out.append(jnp.einsum("bkgts,bske->btkge", probs_BKGTS, v_BTKE[:, :b]).reshape(B, b - a, H, E))
    return jnp.concatenate(out, axis=1) if len(out) > 1 else out[0]


CHUNK = 64
"""Queries per chunk of chunked attention: the fastest at T 256 on a 2-core CPU (training step, float32)."""


def attention_impl(cfg: ModelConfig, T: int, cached: bool) -> str | None:
    """The attention that forward runs without a score hook: cfg.attention_impl, or for None "chunked" on CPU for
    self-attention over at least two chunks (no cache), else None (jax.nn.dot_product_attention's choice)."""
    if cfg.attention_impl is not None:
        return cfg.attention_impl
    if jax.default_backend() == "cpu" and not cached and T >= 2 * CHUNK:
        return "chunked"
    return None


_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def forward(params: dict, tokens_BT, cfg: ModelConfig, *, positions_BT=None, mask_BT=None,
            cache: KVCache | None = None, intervention: Intervention | None = None,
            capture: Capture | None = None, last_only: bool = False) -> Output:
    """Run the decoder on token ids [B, T].

    mask_BT marks real tokens (False = padding); positions_BT defaults to the count of real tokens
    before each one. With a cache, the T tokens are written at slots cache.index.. and attend to
    every valid earlier slot. `intervention(site, layer, x) -> x` may rewrite any site;
    `capture(site, layer, x)` returns a small pytree (or None to skip a site), stacked over layers
    in Output.captured (a capture naming layers in a static `stack_layers` tuple is stacked over those
    only, and the others' results are never held). Capture sees each site after the intervention, or
    before it when the capture has a true static `before_intervention` (what a stateful hook observes).
    `layer` is a traced int32 scalar, under the scan and unrolled alike: select layers with
    jnp.where(layer == i, ...) or by indexing a per-layer array, never with Python control flow.
    A hook that needs to know which tokens are real (a norm over valid tokens) may define
    `bind(mask_BT) -> hook`: forward calls it with this call's [B, T] mask before the layers run.
    Hooks are ordinary arguments: under jit pass them as traced pytrees (flax.struct.dataclass hooks,
    or a plain function wrapped as minimal_lm.hooks.Fn), not as static arguments; see minimal_lm.hooks.
    """
    B, T = tokens_BT.shape
    if cfg.attention_impl == "cudnn" and jax.default_backend() != "gpu":
        raise ConfigError(f"model.attention_impl='cudnn' needs a GPU (this backend: {jax.default_backend()}); "
                          f"use None (the backend's best) or 'xla'")
    dtype = jnp.dtype(cfg.dtype)
    params = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
    default_positions = positions_BT is None and mask_BT is None  # every row at 0..T-1
    if positions_BT is None:
        positions_BT = (jnp.broadcast_to(jnp.arange(T), (B, T)) if mask_BT is None
                        else jnp.maximum(jnp.cumsum(mask_BT, axis=1) - 1, 0))
    positions_BT = positions_BT.astype(jnp.int32)
    pos = scheme(cfg)
    if default_positions:
        # The rotation tables are constants. Computed in-graph, XLA:CPU fuses sin and cos into each use and
        # evaluates them per element of q and k, forward and backward (8% of the study's step).
        with jax.ensure_compile_time_eval():
            rotary = pos.rotary(cfg, jnp.arange(T)[None])
    else:
        rotary = pos.rotary(cfg, positions_BT)
    hook_mask_BT = jnp.ones((B, T), bool) if mask_BT is None else mask_BT.astype(bool)
    intervention, capture = (h.bind(hook_mask_BT) if hasattr(h, "bind") else h for h in (intervention, capture))

    x_BTD = params["embed"][tokens_BT]
    if cfg.embed_scale != 1.0:
        x_BTD = x_BTD * jnp.asarray(cfg.embed_scale, dtype)
    x_BTD = pos.embed(cfg, params["position"], x_BTD, positions_BT)

    if cache is None:
        k_positions_BS, valid_BS, q_slots_T, k_slots_S = positions_BT, mask_BT, jnp.arange(T), jnp.arange(T)
        new_cache_meta = None
    else:
        q_slots_T = cache.index + jnp.arange(T)
        valid_BS = jax.lax.dynamic_update_slice(
            cache.valid_BS, jnp.ones((B, T), bool) if mask_BT is None else mask_BT.astype(bool), (0, cache.index))
        k_positions_BS = jax.lax.dynamic_update_slice(cache.positions_BS, positions_BT, (0, cache.index))
        k_slots_S = jnp.arange(valid_BS.shape[1])
        new_cache_meta = (valid_BS, k_positions_BS, cache.index + T)
    before_intervention = bool(getattr(capture, "before_intervention", False))
    scores = any(wants(h, s) for h in (intervention, capture) for s in SCORE_SITES)
    explicit = scores or cfg.attn_softcap is not None
    is_causal = valid_BS is None and not cfg.windowed and not explicit
    attn_mask = None
    if not is_causal:
        attn_mask = _mask(q_slots_T, k_slots_S, jnp.ones((B, T), bool) if valid_BS is None else valid_BS)
    distance_BTS = positions_BT[:, :, None] - k_positions_BS[:, None, :] if cfg.windowed else None
    bias = pos.bias(cfg, positions_BT, k_positions_BS)
    if bias is not None:
        bias = bias.astype(dtype)
    scale = cfg.attn_scale if cfg.attn_scale is not None else cfg.dim_per_head ** -0.5
    impl = None if explicit else attention_impl(cfg, T, cache is not None)
    if impl == "chunked" and cache is not None:
        raise ConfigError("model.attention_impl='chunked' is for self-attention without a KV cache; use None or 'xla'")

    def layer(x_BTD, xs):
        p, i, window, kv = xs
        captured = {}

        def site(name, x):
            raw = x
            if intervention is not None:
                x = intervention(name, i, x)
            if capture is not None:
                c = capture(name, i, raw if before_intervention else x)
                if c is not None:
                    captured[name] = c
            return x

        def attention(h_BTD, kv):
            q_BTHE, k_BTKE, v_BTKE = (dense(h_BTD, p[w].reshape(h_BTD.shape[-1], -1)).reshape(B, T, *p[w].shape[1:])
                                      for w in ("wq", "wk", "wv"))
            if cfg.qkv_bias:
                q_BTHE, k_BTKE, v_BTKE = q_BTHE + p["bq"], k_BTKE + p["bk"], v_BTKE + p["bv"]
            q_BTHE, k_BTKE = site("q_proj", q_BTHE), site("k_proj", k_BTKE)
            if cfg.qk_norm:
                q_BTHE = rms_norm(q_BTHE, p["q_norm"], cfg.norm_eps, cfg.norm_offset)
                k_BTKE = rms_norm(k_BTKE, p["k_norm"], cfg.norm_eps, cfg.norm_offset)
            q_BTHE, k_BTKE = site("q_pre", q_BTHE), site("k_pre", k_BTKE)
            q_BTHE = site("q", pos.rotate(cfg, q_BTHE, positions_BT, rotary))
            k_BTKE = site("k", pos.rotate(cfg, k_BTKE, positions_BT, rotary))
            v_BTKE = site("v", v_BTKE)
            if kv is not None:
                k_BTKE = jax.lax.dynamic_update_slice(kv[0], k_BTKE.astype(kv[0].dtype), (0, cache.index, 0, 0))
                v_BTKE = jax.lax.dynamic_update_slice(kv[1], v_BTKE.astype(kv[1].dtype), (0, cache.index, 0, 0))
                kv = (k_BTKE, v_BTKE)
            k_BSKE, v_BSKE = k_BTKE.astype(dtype), v_BTKE.astype(dtype)
            mask = attn_mask
            if cfg.windowed:
                mask = mask & ((window == 0) | (distance_BTS < window))[:, None]
            if explicit:
                probs_BHTS = attention_probs(q_BTHE, k_BSKE, bias, mask, scale, cfg.attn_softcap, site)
                B_, S, K, E = k_BSKE.shape
                probs_BKGTS = probs_BHTS.reshape(B_, K, -1, T, S)
                o_BTHE = jnp.einsum("bkgts,bske->btkge", probs_BKGTS, v_BSKE).reshape(q_BTHE.shape)
            elif impl == "chunked":
                o_BTHE = chunked_attention(q_BTHE, k_BSKE, v_BSKE, bias, mask, scale, CHUNK)
            else:
                o_BTHE = jax.nn.dot_product_attention(
                    q_BTHE, k_BSKE, v_BSKE, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
                    implementation=impl)
            out_BTD = dense(o_BTHE.reshape(B, T, -1), p["wo"].reshape(-1, p["wo"].shape[-1]))
            if cfg.out_bias:
                out_BTD = out_BTD + p["bo"]
            if cfg.sandwich_norms:
                out_BTD = norm(cfg, p, "post_attn_norm", out_BTD)
            return site("attn_out", out_BTD), kv

        def feed_forward(h_BTD):
            out_BTD = mlp(cfg, p, h_BTD)
            if cfg.sandwich_norms:
                out_BTD = norm(cfg, p, "post_mlp_norm", out_BTD)
            return site("mlp_out", out_BTD)

        attn_BTD, kv = attention(norm(cfg, p, "attn_norm", x_BTD), kv)
        if cfg.parallel_residual:
            x_BTD = x_BTD + attn_BTD + feed_forward(norm(cfg, p, "mlp_norm", x_BTD))
        else:
            x_BTD = x_BTD + attn_BTD
            x_BTD = x_BTD + feed_forward(norm(cfg, p, "mlp_norm", x_BTD))
        return site("resid", x_BTD), (captured, kv)

    if cfg.remat != "none":
        layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[cfg.remat])
    kv_in = None if cache is None else (cache.k_LBSKE, cache.v_LBSKE)
    windows_L = jnp.array(cfg.layer_windows or (0,) * cfg.num_layers, jnp.int32)
    xs = (params["layers"], jnp.arange(cfg.num_layers), windows_L, kv_in)
    keep = kept_layers(capture, cfg.num_layers)
    if cfg.scan_layers and keep is None:
        x_BTD, (captured, kv_out) = jax.lax.scan(layer, x_BTD, xs)
    elif cfg.scan_layers:
        x_BTD, captured, kv_out = _scan_keeping(layer, x_BTD, xs, keep)
    else:
        outs = []
        for i in range(cfg.num_layers):
            x_BTD, out = layer(x_BTD, jax.tree.map(lambda a: a[i], xs))
            outs.append(out)
        captured, kv_out = jax.tree.map(lambda *a: jnp.stack(a), *outs) if outs else ({}, None)
        if keep is not None:  # stack only the kept layers: the others' results are dead code
            captured = jax.tree.map(lambda *a: jnp.stack(a), *[outs[i][0] for i in keep])

    x_BTD = norm(cfg, params, "final_norm", x_BTD)
    if last_only:
        x_BTD = x_BTD[:, -1:]
    unembed_DV = params["embed"].T if cfg.tie_embeddings else params["unembed"]
    logits_BTV = softcap(dense(x_BTD, unembed_DV, jnp.float32),
                         cfg.final_softcap)
    new_cache = None if cache is None else KVCache(kv_out[0], kv_out[1], *new_cache_meta)
    return Output(logits_BTV, captured, new_cache)


def kept_layers(capture, num_layers: int) -> tuple[int, ...] | None:
    """The layers whose capture results forward keeps: a capture may name them in a static `stack_layers`
    tuple (None or absent: every layer). Results then stack over those layers only, in increasing order."""
    keep = getattr(capture, "stack_layers", None)
    if keep is None:
        return None
    keep = tuple(sorted(set(int(i) for i in keep)))
    if not keep or keep[0] < 0 or keep[-1] >= num_layers:
        raise ValueError(f"stack_layers={keep}: expected layer indices in [0, {num_layers})")
    return None if keep == tuple(range(num_layers)) else keep


def _scan_keeping(layer, x_BTD, xs, keep):
    """The layer scan, with the capture results of the layers in `keep` written into a [len(keep), ...]
    buffer carried through the scan: the other layers' results are never held."""
    shapes = jax.eval_shape(layer, x_BTD, jax.tree.map(lambda a: a[0], xs))[1][0]
    buf = jax.tree.map(lambda s: jnp.zeros((len(keep),) + s.shape, s.dtype), shapes)
    keep_N = jnp.asarray(keep, jnp.int32)

    def step(carry, xs_i):
        x_BTD, buf = carry
        x_BTD, (c, kv) = layer(x_BTD, xs_i)
        hit_N = keep_N == xs_i[1]
        j, hit = jnp.argmax(hit_N), jnp.any(hit_N)
        buf = jax.tree.map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, jnp.where(hit, v, b[j]), j, 0),
                           buf, c)
        return (x_BTD, buf), kv

    (x_BTD, captured), kv_out = jax.lax.scan(step, (x_BTD, buf), xs)
    return x_BTD, captured, kv_out


def _mask(q_slots_T, k_slots_S, valid_BS):
    """[B, 1, T, S] boolean: causal over slots and only valid keys; each query sees itself so that
    padded rows never have an empty softmax."""
    causal_TS = k_slots_S[None, :] <= q_slots_T[:, None]
    diag_TS = k_slots_S[None, :] == q_slots_T[:, None]
    return ((causal_TS[None] & valid_BS[:, None, :].astype(bool)) | diag_TS[None])[:, None]


def count_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))

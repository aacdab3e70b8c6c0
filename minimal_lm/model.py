"""The decoder: params as a plain pytree (layers stacked on axis 0) and pure functions over it.

Shape suffixes: B batch, T query tokens, S key tokens (cache slots), D d_model, H heads,
K kv heads, E head_dim, F mlp hidden, V vocab, L layers.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from minimal_lm.config import ModelConfig
from minimal_lm.positions import scheme

SITES = ("q_pre", "k_pre", "q", "k", "v", "attn_out", "mlp_out", "resid")
"""Named sites in each layer. q_pre/k_pre: projections before rotation ([B,T,H,E] / [B,T,K,E]);
q/k: after rotation (the same arrays as q_pre/k_pre when nothing rotates); v: [B,T,K,E];
attn_out: after the output projection, mlp_out, resid: the residual after the layer ([B,T,D])."""

Intervention = Callable[[str, Any, jax.Array], jax.Array]
Capture = Callable[[str, Any, jax.Array], Any]


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
    if cfg.qkv_bias:
        layers.update(bq=jnp.zeros((L, H, E)), bk=jnp.zeros((L, K, E)), bv=jnp.zeros((L, K, E)))
    params = {"embed": normal((V, D), std), "layers": layers, "final_norm": jnp.ones((D,)),
              "position": scheme(cfg).init(cfg, next(k))}
    if not cfg.tie_embeddings:
        params["unembed"] = normal((D, V), std)
    return jax.tree.map(lambda a: a.astype(cfg.param_dtype), params)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None) -> KVCache:
    shape = (cfg.num_layers, batch, length, cfg.kv_heads, cfg.dim_per_head)
    dtype = dtype or cfg.dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool),
                   jnp.zeros((batch, length), jnp.int32), jnp.zeros((), jnp.int32))


def rms_norm(x, weight, eps):
    """Hugging Face's LlamaRMSNorm: normalise in float32, cast back, then scale."""
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * x32.astype(x.dtype)


_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def forward(params: dict, tokens_BT, cfg: ModelConfig, *, positions_BT=None, mask_BT=None,
            cache: KVCache | None = None, intervention: Intervention | None = None,
            capture: Capture | None = None, last_only: bool = False) -> Output:
    """Run the decoder on token ids [B, T].

    mask_BT marks real tokens (False = padding); positions_BT defaults to the count of real tokens
    before each one. With a cache, the T tokens are written at slots cache.index.. and attend to
    every valid earlier slot. `intervention(site, layer, x) -> x` may rewrite any site;
    `capture(site, layer, x)` returns a small pytree (or None to skip a site), stacked over layers
    in Output.captured. Capture sees each site after the intervention, as the model does.
    A hook that needs to know which tokens are real (a norm over valid tokens) may define
    `bind(mask_BT) -> hook`: forward calls it with this call's [B, T] mask before the layers run.
    """
    B, T = tokens_BT.shape
    dtype = jnp.dtype(cfg.dtype)
    params = jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
    if positions_BT is None:
        positions_BT = (jnp.broadcast_to(jnp.arange(T), (B, T)) if mask_BT is None
                        else jnp.maximum(jnp.cumsum(mask_BT, axis=1) - 1, 0))
    positions_BT = positions_BT.astype(jnp.int32)
    pos = scheme(cfg)
    hook_mask_BT = jnp.ones((B, T), bool) if mask_BT is None else mask_BT.astype(bool)
    intervention, capture = (h.bind(hook_mask_BT) if hasattr(h, "bind") else h for h in (intervention, capture))

    x_BTD = params["embed"][tokens_BT]
    x_BTD = pos.embed(cfg, params["position"], x_BTD, positions_BT)

    if cache is None:
        k_positions_BS, attn_mask, is_causal = positions_BT, None, mask_BT is None
        if mask_BT is not None:
            attn_mask = _mask(jnp.arange(T), jnp.arange(T), mask_BT)
        new_cache_meta = None
    else:
        slots_T = cache.index + jnp.arange(T)
        valid_BS = jax.lax.dynamic_update_slice(
            cache.valid_BS, jnp.ones((B, T), bool) if mask_BT is None else mask_BT.astype(bool), (0, cache.index))
        k_positions_BS = jax.lax.dynamic_update_slice(cache.positions_BS, positions_BT, (0, cache.index))
        attn_mask, is_causal = _mask(slots_T, jnp.arange(valid_BS.shape[1]), valid_BS), False
        new_cache_meta = (valid_BS, k_positions_BS, cache.index + T)
    bias = pos.bias(cfg, positions_BT, k_positions_BS)
    if bias is not None:
        bias = bias.astype(dtype)

    def layer(x_BTD, xs):
        p, i, kv = xs
        captured = {}

        def site(name, x):
            if intervention is not None:
                x = intervention(name, i, x)
            if capture is not None:
                c = capture(name, i, x)
                if c is not None:
                    captured[name] = c
            return x

        h_BTD = rms_norm(x_BTD, p["attn_norm"], cfg.norm_eps)
        q_BTHE = jnp.einsum("btd,dhe->bthe", h_BTD, p["wq"])
        k_BTKE = jnp.einsum("btd,dke->btke", h_BTD, p["wk"])
        v_BTKE = jnp.einsum("btd,dke->btke", h_BTD, p["wv"])
        if cfg.qkv_bias:
            q_BTHE, k_BTKE, v_BTKE = q_BTHE + p["bq"], k_BTKE + p["bk"], v_BTKE + p["bv"]
        q_BTHE, k_BTKE = site("q_pre", q_BTHE), site("k_pre", k_BTKE)
        q_BTHE = site("q", pos.rotate(cfg, q_BTHE, positions_BT))
        k_BTKE = site("k", pos.rotate(cfg, k_BTKE, positions_BT))
        v_BTKE = site("v", v_BTKE)
        if kv is not None:
            k_BTKE = jax.lax.dynamic_update_slice(kv[0], k_BTKE.astype(kv[0].dtype), (0, cache.index, 0, 0))
            v_BTKE = jax.lax.dynamic_update_slice(kv[1], v_BTKE.astype(kv[1].dtype), (0, cache.index, 0, 0))
            kv = (k_BTKE, v_BTKE)
        o_BTHE = jax.nn.dot_product_attention(
            q_BTHE, k_BTKE.astype(dtype), v_BTKE.astype(dtype), bias=bias, mask=attn_mask,
            is_causal=is_causal, implementation=cfg.attention_impl)
        x_BTD = x_BTD + site("attn_out", jnp.einsum("bthe,hed->btd", o_BTHE, p["wo"]))
        h_BTD = rms_norm(x_BTD, p["mlp_norm"], cfg.norm_eps)
        gate_BTF = jax.nn.silu(h_BTD @ p["w_gate"]) * (h_BTD @ p["w_up"])
        x_BTD = x_BTD + site("mlp_out", gate_BTF @ p["w_down"])
        return site("resid", x_BTD), (captured, kv)

    if cfg.remat != "none":
        layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[cfg.remat])
    kv_in = None if cache is None else (cache.k_LBSKE, cache.v_LBSKE)
    xs = (params["layers"], jnp.arange(cfg.num_layers), kv_in)
    if cfg.scan_layers:
        x_BTD, (captured, kv_out) = jax.lax.scan(layer, x_BTD, xs)
    else:
        outs = []
        for i in range(cfg.num_layers):
            x_BTD, out = layer(x_BTD, jax.tree.map(lambda a: a[i], xs))
            outs.append(out)
        captured, kv_out = jax.tree.map(lambda *a: jnp.stack(a), *outs) if outs else ({}, None)

    x_BTD = rms_norm(x_BTD, params["final_norm"], cfg.norm_eps)
    if last_only:
        x_BTD = x_BTD[:, -1:]
    unembed_DV = params["embed"].T if cfg.tie_embeddings else params["unembed"]
    logits_BTV = jnp.einsum("btd,dv->btv", x_BTD, unembed_DV, preferred_element_type=jnp.float32)
    new_cache = None if cache is None else KVCache(kv_out[0], kv_out[1], *new_cache_meta)
    return Output(logits_BTV, captured, new_cache)


def _mask(q_slots_T, k_slots_S, valid_BS):
    """[B, 1, T, S] boolean: causal over slots and only valid keys; each query sees itself so that
    padded rows never have an empty softmax."""
    causal_TS = k_slots_S[None, :] <= q_slots_T[:, None]
    diag_TS = k_slots_S[None, :] == q_slots_T[:, None]
    return ((causal_TS[None] & valid_BS[:, None, :].astype(bool)) | diag_TS[None])[:, None]


def count_params(params) -> int:
    return sum(int(a.size) for a in jax.tree.leaves(params))

"""Quantization arms for the paper's claim 6 in which ignoring the massive values damages them and
protecting them keeps them, each with an equal-budget control.

Absmax rounding (probes.quantize) keeps every block's largest entry exact, so it never hurts a massive
dim. The arms here do:
- `KVQuant` (an intervention on q/k, the KV-cache arm): per-token round-to-nearest with the scale set at
  a quantile of |x| over the head's dims (`clip`), so dims beyond it, the massive ones first, saturate.
  keep="massive" passes each head's massive dims through in full precision and leaves them out of the
  scale; keep="random" / "lowest" keep as many non-massive dims instead (the control).
- `WeightQuant` (params -> params, the weight-only arm): per-output-channel round-to-nearest of the
  attention projections. A massive q/k dim is a large activation on a few input channels times moderate
  weights; rounding those weights is multiplied by the large activation. channels="salient" picks the
  input channels with the largest mean |input| on a calibration batch (the AWQ idea) and either scales
  them by s before rounding and divides back after (method="scale", AWQ; the 1/s is what AWQ folds into
  the preceding norm) or keeps their weights in full precision (method="keep", AWQ's mixed-precision
  motivation); channels="random" / "lowest" treat as many other channels the same way (the control).
Fake quantization in float32: no integer kernels, no GPTQ, no AWQ scale search or SmoothQuant migration.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from minimal_lm import ModelConfig, forward
from minimal_lm.hooks import check_scope, static
from minimal_lm.model import norm
from minimal_lm.positions import scheme
from probes.disrupt import Bound, in_layers, parse_names, settle_rule, settle_sites_and_layers
from probes.massive import column_norms, select_dims
from probes.quantize import _check_bits, round_to_nearest

KEEP = ("none", "massive", "random", "lowest")
CHANNELS = ("none", "salient", "random", "lowest")
METHODS = ("scale", "keep")
WEIGHT_TARGETS = ("wq", "wk", "wv")
"""The projections that read the attention norm's output, whose input channels calibration measures."""


def control_mask(chosen, key=None, score=None):
    """As many entries per row (last axis) as `chosen` marks, none of them chosen: at random (key) or
    those with the lowest `score`. jax arrays [..., n]."""
    chosen = jnp.asarray(chosen, bool)
    if score is None:
        score = jax.random.uniform(key, chosen.shape)
    score = jnp.where(chosen, jnp.inf, jnp.asarray(score, jnp.float32))
    rank = jnp.argsort(jnp.argsort(score, axis=-1, stable=True), axis=-1, stable=True)
    return rank < chosen.sum(-1, keepdims=True)


def clipped_round(x, bits: int, clip: float, include=None):
    """Fake-quantize x with one scale per row (last axis), set so the `clip` quantile of |x| over the
    included entries maps to the top of the grid; larger entries saturate (clip=1: absmax)."""
    x32 = jnp.asarray(x).astype(jnp.float32)
    a = jnp.abs(x32) if include is None else jnp.where(include, jnp.abs(x32), jnp.nan)
    top = jnp.nanmax(a, -1, keepdims=True) if clip >= 1 else jnp.nanquantile(a, clip, axis=-1, keepdims=True)
    qmax = 2 ** (bits - 1) - 1
    scale = jnp.nan_to_num(top) / qmax
    safe = jnp.where(scale > 0, scale, 1.0)
    return jnp.where(scale > 0, jnp.clip(jnp.round(x32 / safe), -qmax, qmax) * safe, 0.0)


def _check_clip(clip):
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip <= 1:
        raise ValueError(f"clip={clip!r}: expected a quantile in (0, 1]")


@struct.dataclass
class KVQuant:
    """Per-token, per-head int<bits> round-to-nearest of q/k with a clipped scale (see module doc).
    Massive dims: per example and head, the top-k (default 1) of the column norms over the tokens seen,
    or M > lam * mean. The controls keep as many non-massive dims per head: `random` (drawn with `seed`,
    per site, layer, example and head) or `lowest` (smallest norms). A pytree: `lam` and `layers` traced."""

    bits: int = static(4)
    clip: float = static(0.95)
    keep: str = static("none")
    k: int | None = static(None)
    lam: float | None = None
    seed: int = static(0)
    sites: tuple[str, ...] = static(("q", "k"))
    layers: tuple[int, ...] | None = None
    scope: str = static("all")

    def __post_init__(self):
        _check_bits(self.bits)
        _check_clip(self.clip)
        if self.keep not in KEEP:
            raise ValueError(f"keep={self.keep!r}: expected one of {', '.join(KEEP)}")
        settle_rule(self, min_k=1, k_is="a positive number of massive dims per head")
        check_scope(self.scope)
        if self.scope == "decode":
            raise ValueError("scope='decode': a quantized KV cache holds the prompt's keys too; expected "
                             "'prefill' or 'all'")
        settle_sites_and_layers(self)

    def __call__(self, site, layer, x):
        return self.apply(site, layer, x, None)

    def kept(self, site, layer, x_BTHE, mask_BT):
        """The dims passed through in full precision, bool [B, heads, head_dim] (None for keep="none")."""
        if self.keep == "none":
            return None
        m_BHE = column_norms(x_BTHE, mask_BT)
        massive_BHE = select_dims(m_BHE, "massive", self.k, self.lam)
        if self.keep == "massive":
            return massive_BHE
        if self.keep == "lowest":
            return control_mask(massive_BHE, score=m_BHE)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), self.sites.index(site)), layer)
        return control_mask(massive_BHE, key=key)

    def apply(self, site, layer, x, mask_BT):
        if site not in self.sites:
            return x
        mask_BT = jnp.ones(x.shape[:2], bool) if mask_BT is None else mask_BT.astype(bool)
        keep_BHE = self.kept(site, layer, x, mask_BT)
        keep_BTHE = None if keep_BHE is None else jnp.broadcast_to(keep_BHE[:, None], x.shape)
        y = clipped_round(x, self.bits, self.clip, None if keep_BTHE is None else ~keep_BTHE).astype(x.dtype)
        y = y if keep_BTHE is None else jnp.where(keep_BTHE, x, y)
        return y if self.layers is None else jnp.where(in_layers(layer, self.layers), y, x)

    def bind(self, mask_BT) -> Bound:
        return Bound(self, mask_BT)

    def describe(self) -> str:
        rule = f"top-{self.k}" if self.lam is None else f"M > {self.lam:g} x mean"
        keep = {"none": "no dim kept",
                "massive": f"massive dims ({rule}) kept in full precision",
                "random": f"as many random non-massive dims as massive ({rule}) kept (seed {self.seed})",
                "lowest": f"as many lowest-norm dims as massive ({rule}) kept"}[self.keep]
        layers = "every layer" if self.layers is None else "layers " + ",".join(map(str, self.layers))
        return (f"int{self.bits} per-token round-to-nearest of {', '.join(self.sites)}, scale at the "
                f"{self.clip:g} quantile of |x| per head (larger dims saturate); {keep}; {layers}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(sites=list(self.sites), layers=None if self.layers is None else list(self.layers))
        return {"type": "kv_quant", **d}


def layer_inputs_to_attention(params, cfg: ModelConfig, tokens_BT, mask_BT=None):
    """The input of q/k/v_proj in every layer (the attention norm of the residual entering it), float32
    [L, B, T, D]."""
    tokens_BT = jnp.asarray(tokens_BT)
    mask_BT = jnp.ones(tokens_BT.shape, bool) if mask_BT is None else jnp.asarray(mask_BT, bool)
    return _attention_inputs(params, tokens_BT, mask_BT, cfg=cfg)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _attention_inputs(params, tokens_BT, mask_BT, *, cfg):
    layers = params["layers"]
    L = cfg.num_layers
    at = lambda i: jax.tree.map(lambda a: a[i], layers)
    positions_BT = jnp.maximum(jnp.cumsum(mask_BT, axis=1) - 1, 0)
    x_BTD = params["embed"][tokens_BT].astype(jnp.float32)
    if cfg.embed_scale != 1.0:
        x_BTD = x_BTD * cfg.embed_scale
    x_BTD = scheme(cfg).embed(cfg, params["position"], x_BTD, positions_BT)
    first = norm(cfg, at(0), "attn_norm", x_BTD).astype(jnp.float32)

    def capture(site, layer, x):
        if site != "resid":
            return None
        return norm(cfg, at(jnp.minimum(layer + 1, L - 1)), "attn_norm", x).astype(jnp.float32)

    rest = forward(params, tokens_BT, cfg, mask_BT=mask_BT, capture=capture).captured["resid"]
    return jnp.concatenate([first[None], rest[:-1]], axis=0)


def input_magnitudes(params, cfg: ModelConfig, batches) -> np.ndarray:
    """Mean |input| of each attention input channel over the valid tokens of calibration batches of
    (tokens_BT, mask_BT): float32 [L, D], what AWQ ranks salient channels by."""
    total, count = 0.0, 0
    for tokens_BT, mask_BT in batches:
        h_LBTD = layer_inputs_to_attention(params, cfg, tokens_BT, mask_BT)
        m = jnp.asarray(mask_BT, bool)[None, :, :, None]
        total = total + np.asarray(jnp.where(m, jnp.abs(h_LBTD), 0.0).sum((1, 2)), np.float64)
        count += int(np.asarray(mask_BT).sum())
    if not count:
        raise ValueError("input_magnitudes: no calibration tokens")
    return (total / count).astype(np.float32)


@struct.dataclass
class WeightQuant:
    """Weight-only int<bits> per-output-channel round-to-nearest of `targets` (params -> params), with
    `n` input channels per layer treated as salient (see module doc). `act_LD` is the calibration's mean
    |input| per channel ([L, D], from `calibrate`), a traced leaf; channels="none" (plain RTN) needs none."""

    bits: int = static(4)
    channels: str = static("none")
    method: str = static("scale")
    n: int = static(1)
    s: float = static(2.0)
    seed: int = static(0)
    targets: tuple[str, ...] = static(("wq", "wk"))
    act_LD: jax.Array | None = None

    def __post_init__(self):
        _check_bits(self.bits)
        if self.channels not in CHANNELS:
            raise ValueError(f"channels={self.channels!r}: expected one of {', '.join(CHANNELS)}")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {', '.join(METHODS)}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"n={self.n!r}: expected a positive number of input channels per layer")
        if isinstance(self.s, bool) or not isinstance(self.s, (int, float)) or not self.s > 0:
            raise ValueError(f"s={self.s!r}: expected a positive scale")
        object.__setattr__(self, "targets", parse_names("targets", self.targets, WEIGHT_TARGETS))

    def calibrate(self, params, cfg: ModelConfig, batches) -> "WeightQuant":
        return self.replace(act_LD=jnp.asarray(input_magnitudes(params, cfg, batches)))

    def chosen(self) -> jax.Array | None:
        """The input channels treated as salient, bool [L, D] (None for channels="none")."""
        if self.channels == "none":
            return None
        if self.act_LD is None:
            raise ValueError(f"channels={self.channels!r} needs calibration: call .calibrate(params, cfg, batches)")
        act_LD = jnp.asarray(self.act_LD, jnp.float32)
        if self.n > act_LD.shape[-1]:
            raise ValueError(f"n={self.n}: more channels than d_model={act_LD.shape[-1]}")
        salient_LD = select_dims(act_LD, "massive", self.n)
        if self.channels == "salient":
            return salient_LD
        if self.channels == "lowest":
            return control_mask(salient_LD, score=act_LD)
        return control_mask(salient_LD, key=jax.random.key(self.seed))

    def __call__(self, params: dict) -> dict:
        chosen_LD = self.chosen()
        layers = dict(params["layers"])
        for name in self.targets:
            w = jnp.asarray(layers[name])
            w32 = w.astype(jnp.float32)
            rows = (slice(None), slice(None)) + (None,) * (w.ndim - 2)
            if chosen_LD is None:
                q = round_to_nearest(w32, self.bits, (1,))
            elif self.method == "scale":
                s_LD = jnp.where(chosen_LD, jnp.float32(self.s), 1.0)[rows]
                q = round_to_nearest(w32 * s_LD, self.bits, (1,)) / s_LD
            else:
                keep = jnp.broadcast_to(chosen_LD[rows], w.shape)
                q = jnp.where(keep, w32, round_to_nearest(w32, self.bits, (1,), ~keep))
            layers[name] = q.astype(w.dtype)
        return {**params, "layers": layers}

    def describe(self) -> str:
        what = f"int{self.bits} weight-only round-to-nearest of {', '.join(self.targets)} per output channel"
        if self.channels == "none":
            return what
        how = f"scaled by {self.s:g} before rounding and back after" if self.method == "scale" else \
            "kept in full precision"
        which = {"salient": f"the {self.n} input channel(s) per layer with the largest mean |input| (calibration)",
                 "random": f"{self.n} random non-salient input channel(s) per layer (seed {self.seed})",
                 "lowest": f"the {self.n} input channel(s) per layer with the smallest mean |input|"}[self.channels]
        return f"{what}; {which} {how}"

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "act_LD"}
        d.update(targets=list(self.targets), calibrated=self.act_LD is not None)
        return {"type": "weight_quant", **d}


def relative_error(x_ref, x, mask_BT, dims_BHE):
    """||x - x_ref|| / ||x_ref|| over valid tokens, on the dims marked in dims_BHE (broadcast to
    [B, heads, head_dim]) and on the others:
    (marked, others), floats."""
    x_ref, x = (np.asarray(a, np.float64) for a in (x_ref, x))
    valid = np.asarray(mask_BT, bool)[:, :, None, None]
    dims_BTHE = np.broadcast_to(np.broadcast_to(np.asarray(dims_BHE, bool), x.shape[:1] + x.shape[2:])[:, None],
                                x.shape)
    marked, others = dims_BTHE & valid, ~dims_BTHE & valid
    err = lambda sel: float(np.linalg.norm((x - x_ref)[sel]) / max(np.linalg.norm(x_ref[sel]), 1e-30))
    return err(marked), err(others)

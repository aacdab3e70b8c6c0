"""Simulated quantization for the paper's claim 6: methods that protect massive values keep contextual
ability better than methods that ignore them.

Symmetric round-to-nearest: scale = absmax / (2^(bits-1) - 1) over a block, values rounded to the grid and
mapped back (fake quantization, float in and out). Two transforms:
- `QuantizeActs`: an intervention on q/k activations, blocks per token, per channel or per group of dims;
- `quantize_weights`: params -> params for attention (or MLP) weights, blocks per output channel or per
  group of input dims.
`protect_massive` keeps the massive dims in full precision and leaves them out of every block's absmax,
so "protect massive values" vs "ignore them" is one flag.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import struct

from minimal_lm.hooks import check_scope, is_python, static
from probes.disrupt import Bound, in_layers, parse_names, settle_sites_and_layers
from probes.massive import column_norms, select_dims, threshold_mask, topk_mask

ACT_GRANULARITY = ("per_token", "per_channel", "per_group")
WEIGHT_GRANULARITY = ("per_channel", "per_group")
INPUT_AXES = {"wq": (1,), "wk": (1,), "wv": (1,), "wo": (1, 2), "w_gate": (1,), "w_up": (1,), "w_down": (1,)}
"""Stacked weight -> its input (contracted) axes; every other axis but the layer axis is an output channel."""


def _check_bits(bits):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits={bits!r}: expected an integer from 2 to 16")


def round_to_nearest(x, bits: int, axes, include=None):
    """Fake-quantize x with one scale per block, the block being the `axes` (reduced) of x. Entries where
    `include` is False do not set the scale (they are rounded with it all the same)."""
    x32 = jnp.asarray(x).astype(jnp.float32)
    a = jnp.abs(x32) if include is None else jnp.where(include, jnp.abs(x32), 0.0)
    qmax = 2 ** (bits - 1) - 1
    scale = jnp.max(a, axis=axes, keepdims=True) / qmax
    safe = jnp.where(scale > 0, scale, 1.0)
    q = jnp.clip(jnp.round(x32 / safe), -qmax, qmax) * safe
    return jnp.where(scale > 0, q, 0.0)


def _grouped(x, group: int, fn):
    """Apply fn to x reshaped as [..., n_groups, group] along the last axis, with the group as the block."""
    n = x.shape[-1]
    if group < 1 or n % group:
        raise ValueError(f"group_size={group}: expected a positive divisor of {n}")
    return fn(x.reshape(x.shape[:-1] + (n // group, group))).reshape(x.shape)


def quantize_heads(x_BTHE, mask_BT, bits: int, granularity: str = "per_token", group_size: int = 0, keep_BHE=None):
    """Fake-quantized [B, T, heads, head_dim]: per_token (a scale per token and head), per_channel (per
    example, head and dim, over valid tokens) or per_group (group_size dims of a token's head). Dims in
    keep_BHE stay as they were and are left out of the scales."""
    _check_bits(bits)
    mask_BT = jnp.ones(x_BTHE.shape[:2], bool) if mask_BT is None else mask_BT.astype(bool)
    keep_BTHE = (jnp.zeros(x_BTHE.shape, bool) if keep_BHE is None else
                 jnp.broadcast_to(keep_BHE[:, None], x_BTHE.shape))
    include = ~keep_BTHE
    if granularity == "per_token":
        y = round_to_nearest(x_BTHE, bits, (-1,), include)
    elif granularity == "per_channel":
        y = round_to_nearest(x_BTHE, bits, (1,), include & mask_BT[:, :, None, None])
    elif granularity == "per_group":
        E = x_BTHE.shape[-1]
        if group_size < 1 or E % group_size:
            raise ValueError(f"group_size={group_size}: expected a positive divisor of head_dim={E}")
        G = (E // group_size, group_size)
        xg, ig = (a.reshape(a.shape[:-1] + G) for a in (x_BTHE, include))
        y = round_to_nearest(xg, bits, (-1,), ig).reshape(x_BTHE.shape)
    else:
        raise ValueError(f"granularity={granularity!r}: expected one of {', '.join(ACT_GRANULARITY)}")
    return jnp.where(keep_BTHE, x_BTHE, y.astype(x_BTHE.dtype))


@struct.dataclass
class QuantizeActs:
    """An intervention that fake-quantizes q/k activations. With protect_massive, each example's and head's
    massive dims (top-k of M, or M > lam * mean) pass through in full precision. A pytree: `lam` and
    `layers` are traced leaves, the other fields static."""

    bits: int = static(8)
    granularity: str = static("per_token")
    group_size: int = static(0)
    sites: tuple[str, ...] = static(("q", "k"))
    protect_massive: bool = static(False)
    k: int | None = static(None)
    lam: float | None = None
    layers: tuple[int, ...] | None = None
    scope: str = static("all")

    def __post_init__(self):
        _check_bits(self.bits)
        if self.granularity not in ACT_GRANULARITY:
            raise ValueError(f"granularity={self.granularity!r}: expected one of {', '.join(ACT_GRANULARITY)}")
        if self.granularity == "per_group" and not (isinstance(self.group_size, int) and self.group_size > 0):
            raise ValueError(f"group_size={self.group_size!r}: per_group needs a positive group size")
        if self.k is not None and self.lam is not None:
            raise ValueError(f"k={self.k} and lam={self.lam}: give one rule for the protected dims")
        if self.lam is None and self.k is None:
            object.__setattr__(self, "k", 1)
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k={self.k!r}: expected a positive number of protected dims per head")
        if self.lam is not None and is_python(self.lam) and not self.lam > 0:
            raise ValueError(f"lam={self.lam!r}: expected a positive number")
        check_scope(self.scope)
        settle_sites_and_layers(self)

    def __call__(self, site, layer, x):
        return self.apply(site, layer, x, None)

    def apply(self, site, layer, x, mask_BT):
        """x quantized at this site; with `layers`, only where the traced layer is one of them (jnp.where)."""
        if site not in self.sites:
            return x
        mask_BT = jnp.ones(x.shape[:2], bool) if mask_BT is None else mask_BT.astype(bool)
        keep = select_dims(column_norms(x, mask_BT), "massive", self.k, self.lam) if self.protect_massive else None
        y = quantize_heads(x, mask_BT, self.bits, self.granularity, self.group_size, keep)
        return y if self.layers is None else jnp.where(in_layers(layer, self.layers), y, x)

    def bind(self, mask_BT) -> Bound:
        return Bound(self, mask_BT)

    def describe(self) -> str:
        g = f"groups of {self.group_size}" if self.granularity == "per_group" else self.granularity.replace("_", " ")
        rule = f"top-{self.k}" if self.lam is None else f"M > {self.lam:g} x mean"
        keep = f", massive dims ({rule}) kept in full precision" if self.protect_massive else ""
        layers = "every layer" if self.layers is None else "layers " + ",".join(map(str, self.layers))
        return f"int{self.bits} round-to-nearest of {', '.join(self.sites)} ({g}){keep}; {layers}"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(sites=list(self.sites), layers=None if self.layers is None else list(self.layers))
        return {"type": "quantize_acts", **d}


def quantize_weights(params: dict, bits: int, *, granularity: str = "per_channel", group_size: int = 128,
                     targets=("wq", "wk", "wv", "wo"), protect: dict | None = None) -> dict:
    """Params with the target layer weights fake-quantized (other leaves shared, not copied).

    per_channel: one scale per output channel over all its inputs; per_group: one per group_size inputs.
    protect maps a target to a boolean mask over its [L, *output axes] (e.g. wq: [L, heads, head_dim]):
    those output channels stay in full precision, as AWQ/SmoothQuant-style methods keep salient channels.
    """
    _check_bits(bits)
    if granularity not in WEIGHT_GRANULARITY:
        raise ValueError(f"granularity={granularity!r}: expected one of {', '.join(WEIGHT_GRANULARITY)}")
    layers = params["layers"]
    targets = parse_names("targets", targets, tuple(k for k in INPUT_AXES if k in layers))
    protect = protect or {}
    unknown = sorted(set(protect) - set(targets))
    if unknown:
        raise ValueError(f"protect: {unknown} are not quantized targets ({', '.join(targets)})")
    new = dict(layers)
    for name in targets:
        w = jnp.asarray(layers[name])
        in_axes = INPUT_AXES[name]
        out_axes = [a for a in range(1, w.ndim) if a not in in_axes]
        perm = (0, *out_axes, *in_axes)
        wt = jnp.transpose(w, perm)
        flat = wt.reshape(wt.shape[:1 + len(out_axes)] + (-1,))
        if granularity == "per_channel":
            qf = round_to_nearest(flat, bits, (-1,))
        else:
            qf = _grouped(flat, group_size, lambda g: round_to_nearest(g, bits, (-1,)))
        q = jnp.transpose(qf.reshape(wt.shape), np.argsort(perm)).astype(w.dtype)
        if name in protect:
            keep = jnp.asarray(protect[name], bool)
            want = tuple(w.shape[a] for a in (0, *out_axes))
            if keep.shape != want:
                raise ValueError(f"protect[{name!r}]: shape {keep.shape}, expected {want} (layers, output axes)")
            q = jnp.where(jnp.expand_dims(keep, in_axes), w, q)
        new[name] = q
    return {**params, "layers": new}


def massive_columns(norms: dict, k: int = 1, lam: float | None = None) -> dict:
    """protect masks for wq and wk from norm matrices of q_pre and k_pre ([L, heads, head_dim], as from
    probes.massive.norm_matrices): the per-head top-k dims, or M > lam * mean. Pre-rotation, because a
    weight column produces one pre-rotation dim."""
    pick = (lambda m: topk_mask(m, k)) if lam is None else (lambda m: threshold_mask(m, lam))
    missing = [s for s in ("q_pre", "k_pre") if s not in norms]
    if missing:
        raise ValueError(f"norms: missing site(s) {missing}; measure q_pre and k_pre")
    return {"wq": pick(norms["q_pre"]), "wk": pick(norms["k_pre"])}

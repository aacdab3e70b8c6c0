"""Hooks as values: pytrees that `forward` and `generate` take as ordinary (traced) arguments; the
activation cache (`run_with_cache`) and activation patching (`Patch`).

A hook is `(site, layer, x) -> x` (an intervention) or `(site, layer, x) -> pytree | None` (a capture).
`layer` is a traced int32 scalar (under the layer scan, and as `jnp.arange(L)[i]` when unrolled), so a
hook picks its layers with `jnp.where(layer == i, ...)` or by indexing a per-layer array with it: acting
on one layer costs that site's elementwise work in each layer, never an extra pass of the model.

Hook classes are `flax.struct.dataclass`es. Array fields are pytree leaves, traced under jit: a new value
of the same structure (other dims, other replacement values, another patch, another layer mask) reuses the
compiled program. Settings (site names, rules, scope, k) are static fields
(`struct.field(pytree_node=False)`): part of the program, so changing one compiles again. A hook asks
`forward` for the optional score sites (attn_scores, attn_probs) by naming them in a static `sites`.

A plain function works where a pytree is expected when wrapped as `Fn(fn)` (jitted entry points such as
`generate` wrap it for you through `as_hook`): the function is a static field, so jit compiles once per
function object (a new lambda or functools.partial each call compiles each call; a module-level function
compiles once). Arrays that a function closes over are baked into the program as constants; make them
fields of a struct.dataclass hook to have them traced.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from minimal_lm.config import ModelConfig
from minimal_lm.model import SCORE_SITES, SITES, forward

SCOPES = ("prefill", "decode", "all")
"""When generation applies an intervention (a hook's `scope`, generate's `intervene_on`): "prefill", the
prompt only (the paper's: the cached prompt keys and values are the edited ones); "decode", generated
tokens only; "all", both."""


def check_scope(scope, name: str = "scope") -> str:
    """scope when it is one of SCOPES, else a ValueError naming the argument."""
    if scope not in SCOPES:
        raise ValueError(f"{name}={scope!r}: expected one of {', '.join(SCOPES)}")
    return scope


def static(default=dataclasses.MISSING):
    """A static field of a hook (a setting: part of the compiled program, not traced)."""
    return struct.field(pytree_node=False, default=default)


def is_python(value) -> bool:
    """True for values given by a user (None, numbers, strings, tuples/lists of numbers or strings); False
    for the arrays, tracers or placeholders a pytree is rebuilt with under jit (flax.struct runs
    __post_init__ then too), which construction-time checks must let through."""
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, (bool, int, float, str)) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


@struct.dataclass
class Fn:
    """A plain function `(site, layer, x) -> ...` as a pytree hook: `fn` is static (compiled once per
    function object); `sites` names the optional score sites it needs (default: fn's own `sites`)."""

    fn: Callable = static()
    sites: tuple | None = static(None)

    def __post_init__(self):
        if self.sites is None:
            object.__setattr__(self, "sites", tuple(getattr(self.fn, "sites", ())))

    def __call__(self, site, layer, x):
        return self.fn(site, layer, x)

    def bind(self, mask_BT) -> "Fn":
        return Fn(self.fn.bind(mask_BT), self.sites) if hasattr(self.fn, "bind") else self

    @property
    def scope(self) -> str:
        return getattr(self.fn, "scope", "all")

    def describe(self) -> str:
        fn = self.fn
        return fn.describe() if hasattr(fn, "describe") else getattr(fn, "__name__", repr(fn))


def as_hook(hook):
    """`hook` as a value jit can take as a traced argument: None and pytrees (struct.dataclass hooks)
    pass through; a plain hashable function or object is wrapped as `Fn` (static, compiled once per
    object). Anything else (an unhashable object that is not a pytree) is refused with a message."""
    if hook is None or not jax.tree_util.treedef_is_leaf(jax.tree.structure(hook)):
        return hook
    if isinstance(hook, jax.Array) or not (callable(hook) or hasattr(hook, "bind")):
        raise TypeError(f"hook {hook!r}: expected a function (site, layer, x) or a hook object")
    try:
        hash(hook)
    except TypeError:
        raise TypeError(f"hook of type {type(hook).__name__} is neither a pytree nor hashable: make it a "
                        "flax.struct.dataclass (arrays as fields, settings as struct.field(pytree_node=False)) "
                        "so jit can trace its arrays") from None
    return Fn(hook)


def bind(hook, mask_BT):
    """hook.bind(mask_BT) when the hook defines it (forward does this with each call's mask), else hook."""
    return hook.bind(mask_BT) if hasattr(hook, "bind") else hook


class SiteHook:
    """Base of a hook that acts at one site: a subclass (a struct.dataclass) has a static `site` and a
    `mask_BT` field (this run's real tokens, set by bind()); `site` must be one of `site_names`."""

    site_names = SITES

    def __post_init__(self):
        if self.site not in self.site_names:
            raise ValueError(f"{type(self).__name__} site={self.site!r}: expected one of {', '.join(self.site_names)}")

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,)

    def bind(self, mask_BT):
        return self.replace(mask_BT=mask_BT)


# --- Activation patching -----------------------------------------------------------------------------

@struct.dataclass
class Patch(SiteHook):
    """Write saved activations of one run (a clean prompt, e.g. from run_with_cache) into another (a
    corrupted one), at one site, by layer, head and position. An intervention; every array is traced.

    values: the saved site, [rows, B or 1, T_src, ...] as run_with_cache returns it (B or 1: one clean
        run may be written into every row of the batch). attn_scores/attn_probs: [rows, B or 1, H, T_src, T_src].
    layers: None (values has one row per layer, all patched), a bool [L] mask (one row per layer, patch
        where True), or int [rows] layer indices (values holds those layers, as from run_with_cache(layers=...)).
        With None or a mask, values must hold every layer (a traced index past the end would clamp).
    heads: None (all) or a bool mask over the site's head axis (the model's KV heads at k_pre, k, v).
        Sites without heads (attn_out, mlp_out, resid) take None.
    positions: None (all) or a bool mask [P] or [B, P] over *real-token* positions: index p is each row's
        p-th real token (the model's position id), whatever its left padding. For attn_scores/attn_probs it
        selects query positions.
    source_mask: [B or 1, T_src], the real tokens of the run that made `values` (None: all of them).

    Padding: target token p (this run's p-th real token) takes the source's p-th real token, so clean and
    corrupted batches may be padded differently (and generate's 32-token buckets are fine); padding slots
    and tokens past the end of the source's row are never written. `forward` supplies this run's mask
    through bind(). Patch assumes a full-sequence forward (no cache, or a prefill from an empty cache):
    generation should apply it to the prompt only (`intervene_on=patch.scope`, which is "prefill");
    score sites need a forward without a cache.
    """

    site: str = static()
    values: Any
    layers: Any = None
    heads: Any = None
    positions: Any = None
    source_mask: Any = None
    mask_BT: Any = struct.field(default=None, repr=False)  # this run's real tokens, set by bind()

    scope = "prefill"

    def describe(self) -> str:
        parts = [f"patch {self.site} from saved activations"]
        for name in ("layers", "heads", "positions"):
            if getattr(self, name) is not None:
                parts.append(f"chosen {name}")
        return ", ".join(parts)

    def _row(self, layer):
        """(whether this layer is patched, its saved row)."""
        if self.layers is None:
            return jnp.bool_(True), self.values[layer]
        layers = jnp.asarray(self.layers)
        if layers.ndim != 1 or layers.shape[0] != self.values.shape[0]:
            raise ValueError(f"Patch({self.site!r}) layers: shape {layers.shape}, expected one entry per row of "
                             f"values ({self.values.shape[0]})")
        if layers.dtype == jnp.bool_:
            return layers[layer], self.values[layer]
        hit_n = layers == layer
        return jnp.any(hit_n), self.values[jnp.argmax(hit_n)]

    def __call__(self, site, layer, x):
        if site != self.site:
            return x
        hit, v = self._row(layer)
        score = site in SCORE_SITES
        B, T = (x.shape[0], x.shape[2]) if score else x.shape[:2]
        if v.ndim != x.ndim or v.shape[0] not in (1, B) or (
                v.shape[1] != x.shape[1] if score else v.shape[2:] != x.shape[2:]):
            raise ValueError(f"Patch({site!r}): a saved row has shape {tuple(v.shape)}; this run's {site} is "
                             f"{tuple(x.shape)} (batch must match or be 1; tokens may differ)")
        mask_BT = jnp.ones((B, T), bool) if self.mask_BT is None else jnp.asarray(self.mask_BT, bool)
        T_src = v.shape[-1] if score else v.shape[1]
        src_BS = (jnp.ones((v.shape[0], T_src), bool) if self.source_mask is None
                  else jnp.asarray(self.source_mask, bool))
        idx_BT, ok_BT = _align(mask_BT, src_BS)
        sel_BT = ok_BT & self._positions(mask_BT)
        v = jnp.broadcast_to(v, (B,) + v.shape[1:])
        b = jnp.arange(B)
        if score:
            if x.shape[3] != T:
                raise ValueError(f"Patch({site!r}) needs a forward without a cache (keys = queries); "
                                 f"got {x.shape[3]} key slots for {T} queries")
            H = x.shape[1]
            v = v[b[:, None, None, None], jnp.arange(H)[None, :, None, None], idx_BT[:, None, :, None],
                  idx_BT[:, None, None, :]]
            write = sel_BT[:, None, :, None] & ok_BT[:, None, None, :]
            head_axis = 1
        else:
            v = v[b[:, None], idx_BT]
            write = sel_BT.reshape(sel_BT.shape + (1,) * (x.ndim - 2))
            head_axis = 2
        if self.heads is not None:
            if site in ("attn_out", "mlp_out", "resid"):
                raise ValueError(f"Patch({site!r}): this site has no head axis; heads must be None")
            heads = jnp.asarray(self.heads, bool)
            if heads.shape != (x.shape[head_axis],):
                raise ValueError(f"Patch({site!r}) heads: a bool mask of {x.shape[head_axis]} heads expected, "
                                 f"got shape {heads.shape}")
            shape = [1] * x.ndim
            shape[head_axis] = -1
            write = write & heads.reshape(shape)
        return jnp.where(hit & write, v.astype(x.dtype), x)

    def _positions(self, mask_BT):
        if self.positions is None:
            return jnp.ones(mask_BT.shape, bool)
        pos_BT = jnp.cumsum(mask_BT, axis=1) - 1
        pm = jnp.asarray(self.positions, bool)
        pm_BP = jnp.broadcast_to(pm, (mask_BT.shape[0], pm.shape[-1]))
        P = pm.shape[-1]
        picked = jnp.take_along_axis(pm_BP, jnp.clip(pos_BT, 0, P - 1), axis=1)
        return picked & (pos_BT < P)


def _align(mask_BT, src_BS):
    """For each target slot, the source slot holding the same real-token position, and whether both are
    real tokens. Works for any padding pattern (real slots are taken in order)."""
    B, T = mask_BT.shape
    S = src_BS.shape[1]
    pos_BT = jnp.cumsum(mask_BT, axis=1) - 1
    src_BS = jnp.broadcast_to(src_BS, (B, S))
    real_slots_BS = jnp.argsort(~src_BS, axis=1, stable=True)
    idx_BT = jnp.take_along_axis(real_slots_BS, jnp.clip(pos_BT, 0, S - 1), axis=1)
    ok_BT = mask_BT & (pos_BT < src_BS.sum(1, keepdims=True))
    return idx_BT, ok_BT


# --- The activation cache ------------------------------------------------------------------------------

@struct.dataclass
class _Keep:
    """The capture of run_with_cache: each named site's full value, at the layers in stack_layers (None:
    all), which forward then keeps alone (a buffer of those layers carried through the scan)."""

    sites: tuple = static()
    stack_layers: tuple | None = static(None)

    def __call__(self, site, layer, x):
        return x if site in self.sites else None


@functools.partial(jax.jit, static_argnames=("cfg", "sites", "layers"))
def _run_with_cache(params, tokens_BT, mask_BT, *, cfg, sites, layers):
    out = forward(params, tokens_BT, cfg, mask_BT=mask_BT, capture=_Keep(sites, layers))
    return out.logits, out.captured


def _check(cfg: ModelConfig, tokens_BT, sites, layers):
    if isinstance(sites, str):
        sites = tuple(s.strip() for s in sites.split(",") if s.strip())
    sites = tuple(dict.fromkeys(sites))
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise ValueError(f"sites={sites!r}: expected one or more of {', '.join(SITES)}")
    if layers is not None:
        layers = (layers,) if isinstance(layers, int) else tuple(layers)
        if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < cfg.num_layers for i in layers):
            raise ValueError(f"layers={layers!r}: expected indices in [0, {cfg.num_layers}) or None (all)")
        layers = tuple(sorted(set(layers)))
        if layers == tuple(range(cfg.num_layers)):
            layers = None
    if jnp.ndim(tokens_BT) != 2:
        raise ValueError(f"tokens: expected [batch, tokens] ids, got shape {jnp.shape(tokens_BT)}")
    return sites, layers


DEFAULT_SITES = tuple(s for s in SITES if s not in SCORE_SITES)


def cache_bytes(params, tokens_BT, cfg: ModelConfig, sites=DEFAULT_SITES, layers=None, mask_BT=None) -> int:
    """Bytes run_with_cache would return for these arguments, from shapes alone (jax.eval_shape)."""
    sites, layers = _check(cfg, tokens_BT, sites, layers)
    return _bytes(params, tokens_BT, cfg, sites, layers, mask_BT)


def _bytes(params, tokens_BT, cfg, sites, layers, mask_BT):
    _, shapes = _run_with_cache.eval_shape(params, tokens_BT, mask_BT, cfg=cfg, sites=sites, layers=layers)
    return sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize for s in jax.tree.leaves(shapes))


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.2f} {unit}"
        n /= 1024


class CacheTooLarge(ValueError):
    """run_with_cache refused a cache above its max_bytes; the message says how much and how to allow it."""


def run_with_cache(params, tokens_BT, cfg: ModelConfig, sites=DEFAULT_SITES, layers=None, mask_BT=None,
                   max_bytes: int | None = 2 ** 30):
    """(logits [B, T, V], {site: [n_layers, ...]}): the full activations of the chosen sites at the chosen
    layers (None: all; rows in increasing layer order), as TransformerLens's run_with_cache.

    sites: any of SITES (default: all but attn_scores/attn_probs, which are [B, H, T, T] and switch the
    forward to explicit attention; name them to have them computed). mask_BT marks real tokens (False:
    padding), as in forward. The memory the cache takes is computed first from shapes; above max_bytes
    (default 1 GiB) it raises CacheTooLarge saying how much; pass a larger max_bytes (or None) to allow it.
    Only the chosen layers' values are ever held (forward's `stack_layers`), so that figure is what the
    cache adds to the forward's own working memory."""
    sites, layers = _check(cfg, tokens_BT, sites, layers)
    tokens_BT = jnp.asarray(tokens_BT)
    mask_BT = None if mask_BT is None else jnp.asarray(mask_BT, bool)
    if max_bytes is not None:
        need = _bytes(params, tokens_BT, cfg, sites, layers, mask_BT)
        if need > max_bytes:
            n = cfg.num_layers if layers is None else len(layers)
            raise CacheTooLarge(
                f"run_with_cache: {', '.join(sites)} at {n} layer(s) for {tokens_BT.shape[0]} x "
                f"{tokens_BT.shape[1]} tokens would take {_human(need)} ({need} bytes), above max_bytes="
                f"{_human(max_bytes)}; pass max_bytes={need} (or None for no limit) to allow it, or cache "
                f"fewer sites, layers or tokens")
    return _run_with_cache(params, tokens_BT, mask_BT, cfg=cfg, sites=sites, layers=layers)

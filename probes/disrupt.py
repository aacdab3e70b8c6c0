"""Disruption of massive values in Q and K, as values that plug into the model's intervention hook.

For example b and head h, M[b, h, d] = L2 norm of X[b, :, h, d] over b's valid tokens (Jin et al. 2025).
The selected dims of each (b, h) -- massive: the top-k of M (the authors' code) or M > lam * mean_d M (their
text); non-massive: the k smallest, or as many smallest as the threshold marks massive -- have their whole
column over valid tokens replaced by one value: the column's mean over valid tokens, zero, its max or min.

A `Disruption` is a frozen dataclass: compare it, print it (`describe()`), save it (`to_dict()`), and chain it
with other hooks and captures (`chain(a, b, tap(...))` or `a + b`). Its `scope` says when generation applies
it, one of minimal_lm.hooks.SCOPES: "prefill" (the prompt only, so cached prompt keys are ablated and
generated tokens are not), "decode" (generated tokens only) or "all".
Under "all" and "decode", generation carries each column's statistics over the sequence so far
(`ColumnStats`), so a generated token is disrupted at the dims and with the values a full forward of the
sequence up to it would give its last token (see Disruption.observer).

Every hook here is a pytree (flax.struct.dataclass, see minimal_lm.hooks): the rule, k, sites and scope are
static; `lam` and the layer indices are traced leaves, so another threshold or another set of as many layers
reuses the compiled program. `SetDims` takes its dims and values as arrays chosen in advance (e.g. from
probes.massive's norm matrices), so any other selection of dims or stored values reuses the program too.
The layer index a hook receives is always a traced int32 scalar; layers are picked with jnp.where.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from minimal_lm.hooks import Fn, SiteHook, as_hook, bind, check_scope, is_python, static
from probes.massive import column_sum_squares, select_dims

HEAD_SITES = ("q", "k", "q_pre", "k_pre", "v")
SELECT = ("massive", "non_massive")
REPLACE = ("mean", "zero", "max", "min")


@struct.dataclass
class ColumnStats:
    """What a disruption needs of each (example, head, dim) column over real tokens, float32: the sum of
    squares (its root is M, the selection's norm), sum, max and min (the replacements), and the count.
    Mergeable, so generation can carry them over the sequence so far (scope "all" / "decode")."""

    sumsq_BHE: Any
    sum_BHE: Any
    max_BHE: Any
    min_BHE: Any
    n_B: Any

    @classmethod
    def of(cls, x_BTHE, mask_BT) -> "ColumnStats":
        x_BTHE = x_BTHE.astype(jnp.float32)
        valid_BT11 = mask_BT[:, :, None, None]
        return cls(column_sum_squares(x_BTHE, mask_BT), jnp.where(valid_BT11, x_BTHE, 0.0).sum(1),
                   jnp.where(valid_BT11, x_BTHE, -jnp.inf).max(1), jnp.where(valid_BT11, x_BTHE, jnp.inf).min(1),
                   mask_BT.sum(1).astype(jnp.float32))

    def merge(self, other: "ColumnStats") -> "ColumnStats":
        return ColumnStats(self.sumsq_BHE + other.sumsq_BHE, self.sum_BHE + other.sum_BHE,
                           jnp.maximum(self.max_BHE, other.max_BHE), jnp.minimum(self.min_BHE, other.min_BHE),
                           self.n_B + other.n_B)

    def value(self, how: str = "mean") -> jax.Array:
        """One replacement value per column, float32 [B, heads, head_dim]."""
        if how == "mean":
            return self.sum_BHE / jnp.maximum(self.n_B, 1.0)[:, None, None]
        if how == "zero":
            return jnp.zeros_like(self.sum_BHE)
        if how == "max":
            return self.max_BHE
        if how == "min":
            return self.min_BHE
        raise ValueError(f"replace={how!r}: expected one of {', '.join(REPLACE)}")


def replacement(x_BTHE, mask_BT, how: str = "mean") -> jax.Array:
    """One value per column over valid tokens, float32 [B, heads, head_dim]."""
    return ColumnStats.of(x_BTHE, mask_BT.astype(bool)).value(how)


def ablate(x_BTHE, mask_BT=None, *, select="massive", k=1, lam=None, replace="mean", stats=None) -> jax.Array:
    """x with the selected columns of each example and head replaced over its valid tokens; dims and values
    come from `stats` (a ColumnStats over more tokens than x holds, e.g. the sequence so far) when given."""
    mask_BT = jnp.ones(x_BTHE.shape[:2], bool) if mask_BT is None else mask_BT.astype(bool)
    stats = ColumnStats.of(x_BTHE, mask_BT) if stats is None else stats
    sel_BHE = select_dims(jnp.sqrt(stats.sumsq_BHE), select, k, lam)
    write_BTHE = sel_BHE[:, None] & mask_BT[:, :, None, None]
    return jnp.where(write_BTHE, stats.value(replace).astype(x_BTHE.dtype)[:, None], x_BTHE)


def parse_names(name, value, allowed) -> tuple[str, ...]:
    """A tuple of names from a tuple/list or a comma string, each one of `allowed`."""
    if isinstance(value, str):
        value = tuple(s.strip() for s in value.split(",") if s.strip())
    value = tuple(value)
    bad = [s for s in value if s not in allowed]
    if bad:
        raise ValueError(f"{name}={','.join(map(str, value))!r}: {bad} not allowed; expected some of "
                         f"{', '.join(allowed)}")
    return value


def parse_layers(value) -> tuple[int, ...] | None:
    """None ("all") or sorted unique layer indices from ints, a list or a comma string."""
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        try:
            value = [int(s) for s in value.split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"layers={value!r}: expected 'all' or comma-separated layer indices") from None
    if isinstance(value, int):
        value = (value,)
    value = tuple(value)
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in value):
        raise ValueError(f"layers={value!r}: expected non-negative integer layer indices or None (all)")
    return tuple(sorted(set(value)))


def settle_rule(hook, *, min_k: int = 0, k_is: str = "a non-negative integer (dims per head)") -> None:
    """A hook's dim rule checked in place, in __post_init__: top-k (`k`, default 1) or threshold (`lam`),
    not both; k an integer >= min_k, lam positive."""
    if hook.k is not None and hook.lam is not None:
        raise ValueError(f"k={hook.k} and lam={hook.lam}: give one selection rule, top-k or threshold")
    if hook.lam is None:
        k = 1 if hook.k is None else hook.k
        if isinstance(k, bool) or not isinstance(k, int) or k < min_k:
            raise ValueError(f"k={hook.k!r}: expected {k_is}")
        object.__setattr__(hook, "k", k)
    elif is_python(hook.lam) and (isinstance(hook.lam, bool) or not isinstance(hook.lam, (int, float))
                                  or not hook.lam > 0):
        raise ValueError(f"lam={hook.lam!r}: expected a positive number")


def settle_sites_and_layers(hook) -> None:
    """A head-site hook's `sites` and (when Python values) `layers` parsed in place, in __post_init__."""
    object.__setattr__(hook, "sites", parse_names("sites", hook.sites, HEAD_SITES))
    if is_python(hook.layers):
        object.__setattr__(hook, "layers", parse_layers(hook.layers))


def in_layers(layer, layers):
    """Whether the traced layer index is one of `layers` (a tuple of ints or of traced int scalars)."""
    return jnp.isin(layer, jnp.asarray(layers, jnp.int32))


@struct.dataclass
class Disruption:
    """The paper's disruption as an intervention `(site, layer, x) -> x`. Defaults: the top-1 massive dim
    per head of post-RoPE q and k, replaced by its mean, in every layer, at prefill. A pytree: `lam` and
    `layers` are traced leaves, the other fields static."""

    select: str = static("massive")
    k: int | None = static(None)  # None: 1 unless lam is given
    lam: float | None = None
    replace: str = static("mean")
    sites: tuple[str, ...] = static(("q", "k"))
    layers: tuple[int, ...] | None = None  # None: every layer
    scope: str = static("prefill")
    history: Any = struct.field(default=None, repr=False)  # {site: ColumnStats [L, ...]}: see with_history

    def __post_init__(self):
        if self.select not in SELECT:
            raise ValueError(f"select={self.select!r}: expected one of {', '.join(SELECT)}")
        if self.replace not in REPLACE:
            raise ValueError(f"replace={self.replace!r}: expected one of {', '.join(REPLACE)}")
        check_scope(self.scope)
        settle_rule(self)
        settle_sites_and_layers(self)

    def __call__(self, site: str, layer, x):
        return self.apply(site, layer, x, None)

    def apply(self, site: str, layer, x, mask_BT):
        """x ablated at this site; with `layers`, only where the traced layer is one of them (jnp.where:
        the edit's elementwise cost in each layer, no extra pass)."""
        if site not in self.sites or self.k == 0:
            return x
        if self.k is not None and self.k > x.shape[-1]:
            raise ValueError(f"k={self.k}: more dims than head_dim={x.shape[-1]} at site {site!r}")
        stats = None
        if self.history is not None:
            mask = jnp.ones(x.shape[:2], bool) if mask_BT is None else mask_BT.astype(bool)
            prior = jax.tree.map(lambda a: a[layer], self.history[site])
            stats = prior.merge(ColumnStats.of(x, mask))
        y = ablate(x, mask_BT, select=self.select, k=self.k, lam=self.lam, replace=self.replace, stats=stats)
        return y if self.layers is None else jnp.where(in_layers(layer, self.layers), y, x)

    def bind(self, mask_BT) -> "Bound":
        return Bound(self, mask_BT)

    # Generation under scope "all" / "decode" (minimal_lm.generate): each generated token's q and k are
    # disrupted at the dims selected on the sequence so far, with the statistic over the sequence so far,
    # as a full forward would do to the last token of that sequence. `observer()` captures this forward's
    # ColumnStats of the raw (pre-disruption) sites, `merge_history` adds them to the running history, and
    # `with_history` gives the hook that edits the next tokens with it. Earlier tokens keep the edit they
    # had when they were computed (their cached keys): each token's statistics cover the tokens up to it.
    def observer(self) -> "Observe":
        return Observe(self.sites)

    def with_history(self, history) -> "Disruption":
        return dataclasses.replace(self, history=history)

    @staticmethod
    def merge_history(history, new):
        return new if history is None else {site: history[site].merge(new[site]) for site in history}

    def describe(self) -> str:
        if self.lam is not None:
            rule = (f"the massive dims (M > {self.lam:g} x head mean)" if self.select == "massive" else
                    f"as many smallest-norm (non-massive) dims as are massive at lam={self.lam:g}")
        elif self.select == "massive":
            rule = f"the top-{self.k} largest-norm (massive) dims"
        else:
            rule = f"the {self.k} smallest-norm (non-massive) dims"
        value = {"mean": "their mean", "zero": "zero", "max": "their max", "min": "their min"}[self.replace]
        layers = "every layer" if self.layers is None else "layers " + ",".join(map(str, self.layers))
        when = {"prefill": "prompt (prefill) only",
                "decode": "generated tokens only, each with the statistics of the sequence up to it",
                "all": "prompt and every generated token, each with the statistics of the sequence up to it"
                }[self.scope]
        sites = ", ".join(self.sites) or "no site"
        return f"per example and head, {rule} of {sites} set to {value}; {layers}; {when}"

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "history"}
        d.update(sites=list(self.sites), layers=None if self.layers is None else list(self.layers))
        return {"type": "disruption", **d}

    @classmethod
    def from_dict(cls, d: dict, where: str = "disruption") -> "Disruption":
        names = [f.name for f in dataclasses.fields(cls) if f.name != "history"]
        unknown = sorted(set(d) - set(names) - {"type"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
        try:
            return cls(**{k: v for k, v in d.items() if k != "type"})
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def __add__(self, other):
        return chain(self, other)


def disrupt(select: str = "massive", k: int | None = None, lam: float | None = None, replace: str = "mean",
            sites=("q", "k"), layers=None, scope: str = "prefill") -> Disruption:
    """The issue's spelling of `Disruption(...)`; sites may be "q,k" and layers "0,2" or "all"."""
    return Disruption(select, k, lam, replace, sites, layers, scope)


@struct.dataclass
class Observe:
    """A capture of ColumnStats of the named sites before any intervention (Disruption.observer)."""

    sites: tuple[str, ...] = static()
    mask_BT: Any = struct.field(default=None, repr=False)
    before_intervention = True

    def bind(self, mask_BT) -> "Observe":
        return self.replace(mask_BT=mask_BT)

    def __call__(self, site, layer, x):
        if site not in self.sites:
            return None
        mask = jnp.ones(x.shape[:2], bool) if self.mask_BT is None else jnp.asarray(self.mask_BT, bool)
        return ColumnStats.of(x, mask)


@struct.dataclass
class Bound:
    """A hook that has seen this forward's [B, T] mask of real tokens."""

    hook: Any
    mask_BT: Any = struct.field(repr=False)

    def __call__(self, site, layer, x):
        return self.hook.apply(site, layer, x, self.mask_BT)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(getattr(self.hook, "sites", ()))

    def describe(self) -> str:
        return describe(self.hook)


def describe(hook) -> str:
    return hook.describe() if hasattr(hook, "describe") else getattr(hook, "__name__", repr(hook))


@struct.dataclass
class SetDims(SiteHook):
    """Chosen dims of one site set to given values over each example's real tokens: `dims` a bool
    [L, heads, head_dim] (layers where nothing is chosen are left alone), `values` an array broadcastable
    to [L, heads, head_dim] (a stored dataset mean, zero, ...). Both are traced: any other choice of dims
    or values of the same shapes reuses the compiled program. Heads are the model's KV heads at k, k_pre, v;
    chain one SetDims per site."""

    site: str = static()
    dims: Any
    values: Any = 0.0
    scope: str = static("prefill")
    mask_BT: Any = struct.field(default=None, repr=False)  # set by bind()

    site_names = HEAD_SITES

    def __post_init__(self):
        super().__post_init__()
        check_scope(self.scope)

    def __call__(self, site, layer, x_BTHE):
        if site != self.site:
            return x_BTHE
        dims = jnp.asarray(self.dims, bool)
        if dims.shape[1:] != x_BTHE.shape[2:]:
            raise ValueError(f"SetDims({site!r}): dims have shape {dims.shape}, expected [layers, "
                             f"{x_BTHE.shape[2]}, {x_BTHE.shape[3]}] for this site")
        values = jnp.asarray(self.values)
        value_HE = values[layer] if values.ndim == 3 else values
        write_BTHE = dims[layer][None, None]
        if self.mask_BT is not None:
            write_BTHE = write_BTHE & jnp.asarray(self.mask_BT, bool)[:, :, None, None]
        return jnp.where(write_BTHE, jnp.asarray(value_HE, x_BTHE.dtype), x_BTHE)

    def describe(self) -> str:
        return f"chosen dims of {self.site} (per layer and head) set to given values; {self.scope}"

    def __add__(self, other):
        return chain(self, other)


@struct.dataclass
class Tap:
    """A named capture `(site, layer, x) -> pytree | None` for a chain: its results sit under `name`.
    A plain function is held as a static Fn (see minimal_lm.hooks)."""

    name: str = static()
    fn: Any

    def __post_init__(self):
        object.__setattr__(self, "fn", as_hook(self.fn))

    def __call__(self, site, layer, x):
        return self.fn(site, layer, x)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(getattr(self.fn, "sites", ()))

    def bind(self, mask_BT) -> "Tap":
        return Tap(self.name, bind(self.fn, mask_BT))

    def describe(self) -> str:
        return f"capture {self.name!r} ({describe(self.fn)})"


def tap(name: str, fn: Callable, sites=None) -> Tap:
    """A named capture; `sites` names optional score sites a plain function needs (attn_scores, attn_probs)."""
    return Tap(name, fn if sites is None else Fn(fn, tuple(sites)))


@struct.dataclass
class Chain:
    """Interventions applied in order, plus captures that see each site after all of them (as forward's
    capture does). Use it as the intervention, or spread `**chain.hooks()` into forward. A pytree of its
    steps and taps (plain functions held as static Fn)."""

    steps: tuple = ()
    taps: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(as_hook(s) for s in self.steps))
        object.__setattr__(self, "taps", tuple(self.taps))

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site a step or tap names (forward computes the score sites when one asks)."""
        return tuple(dict.fromkeys(s for h in (*self.steps, *self.taps) for s in getattr(h, "sites", ())))

    def __call__(self, site, layer, x):
        for step in self.steps:
            x = step(site, layer, x)
        return x

    def bind(self, mask_BT) -> "Chain":
        return Chain(tuple(bind(s, mask_BT) for s in self.steps), tuple(t.bind(mask_BT) for t in self.taps))

    def capture(self, site, layer, x):
        out = {t.name: r for t in self.taps if (r := t.fn(site, layer, x)) is not None}
        return out or None

    def hooks(self) -> dict:
        """{"intervention": ..., "capture": ...} for forward; captured[site] is then {tap name: result}."""
        return {"intervention": Chain(self.steps) if self.steps else None,
                "capture": _ChainCapture(self) if self.taps else None}

    @property
    def scope(self) -> str:
        """The one scope shared by the steps (hooks without one count as "all"); mixed scopes raise."""
        scopes = {getattr(s, "scope", "all") for s in self.steps}
        if len(scopes) > 1:
            raise ValueError(f"chain mixes scopes {sorted(scopes)}; generation applies one scope to the whole chain")
        return scopes.pop() if scopes else "all"

    def observer(self):
        """The steps' observers (see Disruption.observer), keyed by step index; None when no step has one.
        A step with an observer must be the first to edit its sites (it observes the raw values)."""
        stateful = [i for i, s in enumerate(self.steps) if hasattr(s, "observer")]
        for i in stateful:
            earlier = {x for s in self.steps[:i] for x in getattr(s, "sites", ())}
            if earlier & set(self.steps[i].sites):
                raise ValueError(f"chain step {i} ({describe(self.steps[i])}) follows another edit of "
                                 f"{sorted(earlier & set(self.steps[i].sites))}; put it first to generate with it")
        return _ChainObserve(tuple((str(i), self.steps[i].observer()) for i in stateful)) if stateful else None

    def with_history(self, history) -> "Chain":
        steps = tuple(s.with_history({site: h[str(i)] for site, h in history.items() if str(i) in h})
                      if hasattr(s, "observer") else s for i, s in enumerate(self.steps))
        return Chain(steps, self.taps)

    @staticmethod
    def merge_history(history, new):
        return new if history is None else jax.tree.map(lambda old, add: old.merge(add), history, new,
                                                        is_leaf=lambda x: isinstance(x, ColumnStats))

    def describe(self) -> str:
        parts = [describe(s) for s in self.steps] + [t.describe() for t in self.taps]
        return " | then ".join(parts) if parts else "nothing"

    def __add__(self, other):
        return chain(self, other)


@struct.dataclass
class _ChainCapture:
    chain: Chain

    @property
    def sites(self) -> tuple[str, ...]:
        return self.chain.sites

    def bind(self, mask_BT):
        return _ChainCapture(self.chain.bind(mask_BT))

    def __call__(self, site, layer, x):
        return self.chain.capture(site, layer, x)


@struct.dataclass
class _ChainObserve:
    observers: tuple
    before_intervention = True

    def bind(self, mask_BT):
        return _ChainObserve(tuple((i, o.bind(mask_BT)) for i, o in self.observers))

    def __call__(self, site, layer, x):
        out = {i: r for i, o in self.observers if (r := o(site, layer, x)) is not None}
        return out or None


def chain(*hooks) -> Chain:
    """Compose interventions (applied left to right) and taps; nested chains flatten."""
    steps, taps = [], []
    for h in hooks:
        if isinstance(h, Chain):
            steps += h.steps
            taps += h.taps
        elif isinstance(h, Tap):
            taps.append(h)
        elif h is not None:
            steps.append(h)
    return Chain(tuple(steps), tuple(taps))


def for_phase(hook, phase: str):
    """The part of a hook that runs in one phase of generation ("prefill" or "decode"): the steps whose
    scope is that phase or "all" (hooks without a scope count as "all"), and every tap. None when nothing
    is left."""
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase={phase!r}: expected 'prefill' or 'decode'")
    runs = lambda h: getattr(h, "scope", "all") in (phase, "all")
    if hook is None:
        return hook
    if isinstance(hook, Chain):
        kept = chain(*(s for s in hook.steps if runs(s)), *hook.taps)
        return kept if kept.steps or kept.taps else None
    return hook if runs(hook) else None

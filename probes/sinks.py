"""Attention sinks on the first token (Gu et al., ICLR 2025, "When Attention Sink Emerges in Language Models").

alpha[l, h] is the attention head h of layer l puts on the first token, averaged over the query positions:
Gu et al.'s alpha^l_h(1) = 1/T sum_{i=1..T} A^{l,h}_{i,1}. The first token is each row's first REAL token
(prompts may be left padded), and only real query tokens count. The first query, which can only attend to
itself (A_{1,1} = 1), is included by default, as in Gu et al.'s average over the queries i = k..T that can see
token k; it lifts alpha by at most (1 - alpha) / T (`include_first=False` leaves it out). A head is a sink when
alpha > eps, and the sink share is the fraction of all heads (every layer) that are sinks; Gu et al. use
eps = 0.3 (their ~60M models after 5B tokens: 18-33% of heads, PAPER.md).

The capture hook reduces each layer's [B, H, T, S] attention probabilities to [H] sums inside the layer, so no
score tensor is stacked over layers; batches accumulate sums, and alpha is their ratio.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from minimal_lm import ModelConfig, forward

EPS = 0.3
"""Gu et al.'s threshold on a head's first-token mass."""


@struct.dataclass
class FirstTokenMass:
    """A capture hook at attn_probs: per head, the sum over real query tokens of the attention on the row's
    first real token, float32 [H] per layer. Needs a forward without a cache (keys = queries)."""

    include_first: bool = struct.field(pytree_node=False, default=True)
    mask_BT: Any = struct.field(default=None, repr=False)

    sites = ("attn_probs",)

    def bind(self, mask_BT) -> "FirstTokenMass":
        return self.replace(mask_BT=mask_BT)

    def __call__(self, site, layer, probs_BHTS):
        if site != "attn_probs":
            return None
        B, _, T, S = probs_BHTS.shape
        if S != T:
            raise ValueError(f"FirstTokenMass needs a forward without a cache: got {S} key slots for {T} queries")
        mask_BT = jnp.ones((B, T), bool) if self.mask_BT is None else jnp.asarray(self.mask_BT, bool)
        first_B = jnp.argmax(mask_BT, axis=1)
        on_first_BHT = jnp.take_along_axis(probs_BHTS.astype(jnp.float32), first_B[:, None, None, None], axis=3)[..., 0]
        queries_BT = mask_BT if self.include_first else mask_BT & (jnp.arange(T)[None] != first_B[:, None])
        return jnp.einsum("bht,bt->h", on_first_BHT, queries_BT.astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("cfg", "include_first"))
def first_token_sums(params, tokens_BT, mask_BT, cfg: ModelConfig, include_first: bool = True):
    """(float32 [L, H] sums over real queries of the attention on the first real token, the number of queries)."""
    hook = FirstTokenMass(include_first)
    sums_LH = forward(params, tokens_BT, cfg, mask_BT=mask_BT, capture=hook, last_only=True).captured["attn_probs"]
    n = mask_BT.sum() - (0 if include_first else jnp.any(mask_BT, axis=1).sum())
    return sums_LH, n


def first_token_mass(params, cfg: ModelConfig, batches: Iterable, *, include_first: bool = True,
                     total: int | None = None, progress: bool = True) -> tuple[np.ndarray, int]:
    """alpha [L, H] (float32) over batches of (tokens_BT, mask_BT), and the number of query tokens averaged."""
    acc_LH, n = None, 0
    for tokens_BT, mask_BT in tqdm(batches, total=total, desc="sinks", unit="batch", disable=not progress):
        s_LH, c = first_token_sums(params, jnp.asarray(tokens_BT), jnp.asarray(mask_BT, bool), cfg, include_first)
        acc_LH = s_LH if acc_LH is None else acc_LH + s_LH
        n += int(c)
    if acc_LH is None or n == 0:
        raise ValueError("first_token_mass: no query tokens were given (no prompts?)")
    return (np.asarray(acc_LH, np.float64) / n).astype(np.float32), n


def sink_summary(alpha_LH, eps: float = EPS) -> dict:
    """JSON-ready sink statistics of alpha [L, H]: the matrix, per layer its mean, max and sink heads
    (alpha > eps) and their share, and the share over all heads (Gu et al.'s Sink^eps_1)."""
    if not 0 < eps < 1:
        raise ValueError(f"eps={eps}: expected a threshold between 0 and 1")
    alpha_LH = np.asarray(alpha_LH, np.float64)
    sink_LH = alpha_LH > eps
    return {"eps": float(eps), "first_token_mass": alpha_LH.round(6).tolist(),
            "mean_mass": alpha_LH.mean(1).tolist(), "max_mass": alpha_LH.max(1).tolist(),
            "sink_heads": sink_LH.sum(1).tolist(), "sink_share_layers": sink_LH.mean(1).tolist(),
            "sink_share": float(sink_LH.mean())}

"""Massive values in Q, K and V: per-layer norm matrices, the paper's two selection rules, summaries.

M[l, h, d] = L2 norm over all valid tokens of all prompts of X[:, h, d] at one site of layer l
(Jin et al. 2025). Sums of squares are taken inside jit through the model's capture hook, so only
[layers, heads, head_dim] arrays leave the device. K and V have the model's KV heads.
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from minimal_lm import ModelConfig, forward, rope_frequency_index

PROBE_SITES = ("q", "k", "v", "q_pre", "k_pre")
"""Sites with per-head activations [B, T, heads, head_dim]: post-rotation q/k, v, pre-rotation q/k."""
PROJ_SITES = ("q_proj", "k_proj")
"""The raw q/k projections: the same as q_pre/k_pre unless the model normalizes q and k (cfg.qk_norm)."""


def probe_sites(cfg: ModelConfig) -> tuple[str, ...]:
    """The sites probed by default: PROBE_SITES, plus q_proj/k_proj where a q/k norm (Qwen3) makes them
    differ from q_pre/k_pre (the norm can hide or make massive values)."""
    return PROBE_SITES + PROJ_SITES if cfg.qk_norm else PROBE_SITES


def check_sites(sites: Iterable[str]) -> tuple[str, ...]:
    sites = tuple(sites)
    bad = [s for s in sites if s not in PROBE_SITES + PROJ_SITES]
    if bad or not sites:
        raise ValueError(f"sites={','.join(sites)!r}: expected one or more of {', '.join(PROBE_SITES + PROJ_SITES)}")
    return sites


def column_sum_squares(x_BTHE, mask_BT, *, per_example: bool = True) -> jax.Array:
    """Sum over valid tokens of x**2 per (head, dim), float32: [B, heads, head_dim] per example, or
    [heads, head_dim] over the whole batch. Its square root is M, the norm both rules select on."""
    x_BTHE = x_BTHE.astype(jnp.float32)
    return jnp.einsum("bthe,bt->bhe" if per_example else "bthe,bt->he", x_BTHE * x_BTHE,
                      mask_BT.astype(jnp.float32))


def column_norms(x_BTHE, mask_BT) -> jax.Array:
    """M[b, h, d]: L2 norm of x[b, :, h, d] over b's valid tokens, float32 [B, heads, head_dim]."""
    return jnp.sqrt(column_sum_squares(x_BTHE, mask_BT))


@functools.partial(jax.jit, static_argnames=("cfg", "sites"))
def sum_squares(params, tokens_BT, mask_BT, cfg: ModelConfig, sites: tuple[str, ...]) -> dict:
    """Per site, sum over batch and valid tokens of x**2: float32 [L, heads, head_dim]."""

    def capture(site, layer, x_BTHE):
        return column_sum_squares(x_BTHE, mask_BT, per_example=False) if site in sites else None

    return forward(params, tokens_BT, cfg, mask_BT=mask_BT, capture=capture, last_only=True).captured


def norm_matrices(params, cfg: ModelConfig, batches: Iterable, sites=PROBE_SITES, *, total: int | None = None,
                  progress: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """M per site (float32 [L, heads, head_dim]) over batches of (tokens_BT, mask_BT), and the number
    of valid tokens seen. Padding (mask False) contributes nothing."""
    sites = check_sites(sites)
    acc, n_tokens = None, 0
    for tokens_BT, mask_BT in tqdm(batches, total=total, desc="massive", unit="batch", disable=not progress):
        s = sum_squares(params, jnp.asarray(tokens_BT), jnp.asarray(mask_BT, bool), cfg, sites)
        acc = s if acc is None else jax.tree.map(jnp.add, acc, s)
        n_tokens += int(np.asarray(mask_BT).sum())
    if acc is None:
        raise ValueError("norm_matrices: no batches were given (no prompts?)")
    return {site: np.sqrt(np.asarray(acc[site], np.float64)).astype(np.float32) for site in sites}, n_tokens


def head_ratio(m_LHE) -> np.ndarray:
    """M divided by its mean over head_dim, per layer and head (the paper's threshold statistic)."""
    m_LHE = np.asarray(m_LHE, np.float64)
    mean_LH1 = m_LHE.mean(-1, keepdims=True)
    return np.divide(m_LHE, mean_LH1, out=np.zeros_like(m_LHE), where=mean_LH1 > 0)


def _xp(a):
    """jax.numpy for jax arrays (tracers too), numpy otherwise: the selection rules run on either."""
    return jnp if isinstance(a, jax.Array) else np


def topk_dims(m_LHE, k: int = 1, largest: bool = True):
    """Per layer (or example) and head, the k dims with the largest (or smallest) M, in that order: int
    [..., heads, k]. Ties go to the lower dim index. numpy in, numpy out; jax in (traced too), jax out."""
    m_LHE = m_LHE if isinstance(m_LHE, jax.Array) else np.asarray(m_LHE)
    if not 1 <= k <= m_LHE.shape[-1]:
        raise ValueError(f"k={k}: expected 1 <= k <= head_dim={m_LHE.shape[-1]}")
    return _xp(m_LHE).argsort(-m_LHE if largest else m_LHE, axis=-1, stable=True)[..., :k]


def select_dims(m_LHE, select: str = "massive", k: int | None = 1, lam=None):
    """The one selection of massive / non-massive dims: a bool mask [..., heads, head_dim] over norms M.

    With lam, massive is the paper's text, M > lam * mean over head_dim of M, and non-massive is as many
    smallest dims as that marks massive; else massive is the paper's code, the top-k of M, and non-massive
    the k smallest (k 0 or None: nothing). Ties go to the lower dim index. Array-agnostic: numpy in, numpy
    out (records, [L, heads, head_dim]); jax in, jax out (the disruption's per-example [B, heads, head_dim],
    under jit, with a traced lam)."""
    m_LHE = m_LHE if isinstance(m_LHE, jax.Array) else np.asarray(m_LHE)
    xp = _xp(m_LHE)
    if lam is not None:
        massive_LHE = m_LHE > lam * xp.mean(m_LHE, axis=-1, keepdims=True)
        if select == "massive":
            return massive_LHE
        rank_LHE = xp.argsort(xp.argsort(m_LHE, axis=-1, stable=True), axis=-1, stable=True)
        return rank_LHE < massive_LHE.sum(-1, keepdims=True)
    if not k:
        return xp.zeros(m_LHE.shape, bool)
    idx_LHk = topk_dims(m_LHE, k, largest=select == "massive")
    return xp.any(idx_LHk[..., None] == xp.arange(m_LHE.shape[-1]), axis=-2)


def threshold_mask(m_LHE, lam: float = 5.0) -> np.ndarray:
    """The paper's text: M[l, h, d] > lam * mean over d of M[l, h, :]. Boolean [L, heads, head_dim]."""
    return select_dims(m_LHE, lam=lam)


def topk_mask(m_LHE, k: int = 1) -> np.ndarray:
    """The paper's code: per head, the top-k dims of M. Boolean [L, heads, head_dim]."""
    return select_dims(m_LHE, k=k)


def as_set(mask_LHE) -> set[tuple[int, int, int]]:
    """A selection mask as a set of (layer, head, dim)."""
    return {tuple(int(i) for i in idx) for idx in np.argwhere(mask_LHE)}


def threshold_rule(m_LHE, lam: float = 5.0) -> set[tuple[int, int, int]]:
    return as_set(threshold_mask(m_LHE, lam))


def topk_rule(m_LHE, k: int = 1) -> set[tuple[int, int, int]]:
    return as_set(topk_mask(m_LHE, k))


def frequency_map(cfg: ModelConfig) -> dict:
    """The frequency class of each dim of a head (rotate_half layout), and the chance share of each class.

    freq_E: frequency index i (theta_i = base^(-2i/rotary_dim)) of each rotated dim, j mod rotary_dim/2;
    -1 for a dim that does not rotate (partial rotary, e.g. GPT-NeoX/Pythia: only the first rotary_dim dims of
    each head rotate). Unrotated dims are their own class, of frequency zero: neither low nor high frequency.
    low_E: the low-frequency quarter OF THE ROTATED DIMS (the largest quarter of the rotated frequency indices,
    at least one index; both dims of each of those pairs). unrot_E: the unrotated dims.

    Shares (lowfreq_share, unrotated_share) are fractions of the selected mass over all head_dim dims, so
    low-frequency + unrotated + other rotated = 1, and each chance share is its class's share of the head's
    dims (what a selection spread evenly over the dims gives): chance_lowfreq = |low| / head_dim,
    chance_unrotated = |unrotated| / head_dim. chance_lowfreq_rotated = |low| / rotary_dim is the chance of
    lowfreq_share_rotated, the low-frequency share of the mass that sits in rotated dims. chance_share is
    chance_lowfreq (its old name, kept for old readers; for full rotation all these equal the old values).

    A model without rotation (position none, learned, alibi: GPT-2, OPT, GPT-Neo) gets the map a RoPE model of
    this head_dim and rope_fraction would use, for comparison only: `hypothetical` is True and `label` says so."""
    freq_E = np.asarray(rope_frequency_index(cfg))
    head_dim, rot_E = len(freq_E), freq_E >= 0
    n_rot = int(rot_E.sum())
    n_freq = int(freq_E.max()) + 1 if n_rot else 0
    low_E = rot_E & (freq_E >= n_freq - max(1, n_freq // 4))
    rotated = cfg.position == "rope"
    return {"freq_E": freq_E, "low_E": low_E, "unrot_E": ~rot_E, "rotated": rotated, "hypothetical": not rotated,
            "rotary_dim": n_rot, "label": "" if rotated else hypothetical_label(cfg),
            "chance_share": float(low_E.sum() / head_dim), "chance_lowfreq": float(low_E.sum() / head_dim),
            "chance_unrotated": float((~rot_E).sum() / head_dim),
            "chance_lowfreq_rotated": float(low_E.sum() / n_rot) if n_rot else None}


def hypothetical_label(cfg: ModelConfig) -> str:
    return (f"hypothetical: this model does not rotate (position={cfg.position}); the frequency map is the one a "
            f"RoPE model of head_dim {cfg.dim_per_head} would use, for comparison only")


def class_share(m_LHE, mask_LHE, class_E, within_E=None) -> list[float | None]:
    """Per layer, the share of selected M mass that sits in the dims of class_E, out of the selected mass in
    within_E (default: all dims); None where that mass is zero (nothing selected)."""
    sel_LHE = np.where(mask_LHE, np.asarray(m_LHE, np.float64), 0.0)
    if within_E is not None:
        sel_LHE = sel_LHE * np.asarray(within_E, bool)
    total_L, part_L = sel_LHE.sum((1, 2)), sel_LHE[..., np.asarray(class_E, bool)].sum((1, 2))
    return [float(p / t) if t > 0 else None for p, t in zip(part_L, total_L)]


def lowfreq_share(m_LHE, mask_LHE, low_E) -> list[float | None]:
    """Per layer, the share of selected M mass (over all dims) that sits in low-frequency dims (None if nothing
    selected). Mass in unrotated dims counts in the total: read it beside unrotated_share (class_share)."""
    return class_share(m_LHE, mask_LHE, low_E)


def concentration(m_LHE, freq_E) -> tuple[list[float], list[int]]:
    """Per layer: the share of heads whose top dim falls in the layer's most common frequency index,
    and that index (unrotated dims count as their own index, head_dim + j)."""
    freq_E = np.asarray(freq_E)
    key_E = np.where(freq_E >= 0, freq_E, len(freq_E) + np.arange(len(freq_E)))
    shares, modes = [], []
    for top_H in topk_dims(m_LHE, 1)[..., 0]:
        mode, count = Counter(key_E[top_H].tolist()).most_common(1)[0]
        shares.append(count / len(top_H))
        modes.append(int(mode))
    return shares, modes


def summarize(m_LHE, freq: dict, lam: float = 5.0, k: int = 1) -> dict:
    """Per-layer metrics for one site; lists over layers, JSON-ready.

    lowfreq_share and unrotated_share use the top-k selection (always defined): the shares of the selected mass
    in the low-frequency quarter of the rotated dims and in the unrotated dims (compare with freq["chance_lowfreq"]
    and freq["chance_unrotated"]); lowfreq_share_rotated is the low-frequency share of the selected mass in rotated
    dims only (chance freq["chance_lowfreq_rotated"]; None where the top-k dims are all unrotated). The _threshold
    variants use the threshold rule and are None for layers with no massive entry."""
    ratio_LHE = head_ratio(m_LHE)
    thr_LHE = threshold_mask(m_LHE, lam)
    top_LHE = topk_mask(m_LHE, k)
    conc, mode = concentration(m_LHE, freq["freq_E"])
    unrot_E = freq.get("unrot_E", np.asarray(freq["freq_E"]) < 0)
    return {
        "top1_dims": topk_dims(m_LHE, 1)[..., 0].tolist(),
        "topk_dims": topk_dims(m_LHE, k).tolist(),
        "massive_count": thr_LHE.sum((1, 2)).tolist(),
        "max_ratio": ratio_LHE.max((1, 2)).tolist(),
        "concentration": conc,
        "top_freq_index": mode,
        "lowfreq_share": lowfreq_share(m_LHE, top_LHE, freq["low_E"]),
        "lowfreq_share_threshold": lowfreq_share(m_LHE, thr_LHE, freq["low_E"]),
        "unrotated_share": class_share(m_LHE, top_LHE, unrot_E),
        "unrotated_share_threshold": class_share(m_LHE, thr_LHE, unrot_E),
        "lowfreq_share_rotated": class_share(m_LHE, top_LHE, freq["low_E"], ~np.asarray(unrot_E, bool)),
    }

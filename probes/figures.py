"""Figures of massive values and attention sinks: the paper's Figure 2 view, a layers x head_dim summary, the
low-frequency (and, for partial rotary, unrotated) share per layer, and first-token attention mass per layer and
head. Drawn on matplotlib.figure.Figure objects and saved to files: no backend is chosen and no pyplot state is
touched, so importing this module leaves a notebook's inline plots alone."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.patches
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from probes.massive import head_ratio

_TITLES = {"q": "Q (after RoPE)", "k": "K (after RoPE)", "v": "V", "q_pre": "Q (before RoPE)",
           "k_pre": "K (before RoPE)", "q_proj": "Q (before q norm)", "k_proj": "K (before k norm)"}


def _title(site, rotated):
    return _TITLES[site] if rotated else {"q": "Q", "k": "K", "q_pre": "Q", "k_pre": "K", "q_proj": "Q (before q norm)",
                                          "k_proj": "K (before k norm)"}.get(site, "V")


def subplots(nrows=1, ncols=1, *, figsize, **kw):
    """Like pyplot.subplots, on a Figure of its own: no backend is chosen and nothing is left open."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def save(fig, path, dpi: int = 110) -> Path:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return Path(path)


def chance_text(freq: dict) -> str:
    """The chance shares of a frequency map (probes.massive.frequency_map), as a reader compares them."""
    text = f"low-frequency {freq['chance_lowfreq']:.2f}"
    if freq["unrot_E"].any():
        text += (f", unrotated {freq['chance_unrotated']:.2f} (low-frequency within the rotated dims "
                 f"{freq['chance_lowfreq_rotated']:.2f})" if freq["chance_lowfreq_rotated"] is not None
                 else f", unrotated {freq['chance_unrotated']:.2f}")
    return text


def classes_text(freq: dict) -> str:
    """One sentence on the three classes of dims and their chance shares."""
    head_dim, n_low, n_unrot = len(freq["freq_E"]), int(freq["low_E"].sum()), int(freq["unrot_E"].sum())
    text = (f"{n_low} of {head_dim} dims per head are the low-frequency quarter of the {freq['rotary_dim']} rotated "
            f"dims")
    if n_unrot:
        text += f", {n_unrot} do not rotate (their own class, frequency zero)"
    text += ("; shares are of the selected mass over all dims, chance = the class's dims / head_dim: "
             + chance_text(freq))
    return text + ("; " + freq["label"] if freq.get("label") else "")


def mark_classes(ax, n_heads, low_E, unrot_E, markersize=3):
    """Red marks on the right edge at low-frequency dims; a dashed line where the unrotated dims start."""
    if low_E is not None:
        for d in np.flatnonzero(low_E):
            ax.plot([n_heads - 0.5], [d], marker="<", color="red", markersize=markersize, clip_on=False)
    if unrot_E is not None and np.any(unrot_E):
        ax.axhline(np.flatnonzero(unrot_E)[0] - 0.5, color="white", ls="--", lw=0.8)


def heads_dims(ms: dict, layer: int, path, *, rotated: bool = True, low_E=None, unrot_E=None):
    """Figure 2 of the paper for one layer: per site, M[h, d] with heads on x and head_dim on y.
    Low-frequency dims are marked on the right edge; a dashed line marks where unrotated dims begin."""
    sites = list(ms)
    fig, axes = subplots(1, len(sites), figsize=(3.2 * len(sites), 3.6), squeeze=False)
    for ax, site in zip(axes[0], sites):
        m_HE = ms[site][layer]
        im = ax.imshow(m_HE.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        ax.set_title(f"{_title(site, rotated)}, layer {layer}", fontsize=9)
        ax.set_xlabel("head")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("head dim")
        if site != "v":
            mark_classes(ax, m_HE.shape[0], low_E, unrot_E)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.06, label="M = L2 norm over tokens")
    fig.tight_layout()
    return save(fig, path)


def layers_dims(ms: dict, path, *, rotated: bool = True):
    """Per site, layers x head_dim: M over its head mean, averaged over heads (bright rows that repeat
    across layers are dims that are massive in most heads)."""
    sites = list(ms)
    fig, axes = subplots(1, len(sites), figsize=(3.2 * len(sites), 3.6), squeeze=False)
    for ax, site in zip(axes[0], sites):
        r_LE = head_ratio(ms[site]).mean(1)
        im = ax.imshow(r_LE.T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
        ax.set_title(_title(site, rotated), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("head dim")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="M / head mean (avg over heads)")
    fig.tight_layout()
    return save(fig, path)


def lowfreq_bars(summaries: dict, path, *, chance: float, baseline: dict | None = None, rotated: bool = True,
                 unrotated_chance: float | None = None, hypothetical: str = ""):
    """Per layer, the share of top-k massive mass in the lowest-frequency quarter of the rotated dims, one bar per
    site; dots: the same for a random-init model on the same prompts (the post-RoPE bias of the paper's pitfall).
    With `unrotated_chance` (a partial-rotary model), a second panel: the share in unrotated dims. `hypothetical`
    (a model without rotation): the label, drawn in the title."""
    keys = [("lowfreq_share", "low-frequency share", chance, "lowest-frequency quarter of the rotated dims")]
    if unrotated_chance is not None:
        keys.append(("unrotated_share", "unrotated share", unrotated_chance, "unrotated dims"))
    sites = list(summaries)
    n_layers = len(next(iter(summaries.values()))["lowfreq_share"])
    width = 0.8 / len(sites)
    fig, axes = subplots(len(keys), 1, figsize=(min(16.0, max(5.0, 0.12 * n_layers * len(sites) + 2)),
                                                    3.4 * len(keys)), squeeze=False)
    x = np.arange(n_layers)
    for ax, (key, ylabel, level, where) in zip(axes[:, 0], keys):
        for i, site in enumerate(sites):
            share = [np.nan if s is None else s for s in summaries[site].get(key) or [None] * n_layers]
            bars = ax.bar(x + (i - (len(sites) - 1) / 2) * width, share, width, label=_title(site, rotated))
            if baseline and site in baseline and baseline[site].get(key):
                base = [np.nan if s is None else s for s in baseline[site][key]]
                ax.plot(x + (i - (len(sites) - 1) / 2) * width, base, "o", ms=3,
                        color=bars.patches[0].get_facecolor(), markeredgecolor="black", markeredgewidth=0.5)
        ax.axhline(level, color="gray", ls="--", lw=1, label=f"chance ({level:.2f})")
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(f"share of top-k mass in the {where}" + (" (dots: random init)" if baseline else "")
                     + (f"\n{textwrap.fill(hypothetical, 90)}" if hypothetical else ""), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save(fig, path)


def first_token_heatmap(alpha_LH, path, *, eps: float, baseline_share: float | None = None):
    """Layers x heads: the mean attention each head puts on the first token (probes.sinks); heads above eps (the
    sinks) are outlined. `baseline_share`: the random-init model's sink share, shown in the title."""
    alpha_LH = np.asarray(alpha_LH, np.float64)
    L, H = alpha_LH.shape
    fig, ax = subplots(figsize=(min(12.0, 2.0 + 0.35 * H), min(10.0, 1.5 + 0.3 * L)))
    im = ax.imshow(alpha_LH, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    for layer, head in np.argwhere(alpha_LH > eps):
        ax.add_patch(matplotlib.patches.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    share = float((alpha_LH > eps).mean())
    ax.set_title(f"first-token attention mass; red: sinks (> {eps:g}), share {share:.2f}"
                 + (f" (random init {baseline_share:.2f})" if baseline_share is not None else ""), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean attention on the first token")
    fig.tight_layout()
    return save(fig, path)

"""Figures of massive values (matplotlib, Agg backend): the paper's Figure 2 view, a layers x head_dim
summary and the low-frequency share per layer."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from probes.massive import head_ratio  # noqa: E402

_TITLES = {"q": "Q (after RoPE)", "k": "K (after RoPE)", "v": "V", "q_pre": "Q (before RoPE)",
           "k_pre": "K (before RoPE)"}


def _title(site, rotated):
    return _TITLES[site] if rotated else {"q": "Q", "k": "K", "q_pre": "Q", "k_pre": "K"}.get(site, "V")


def _save(fig, path):
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def heads_dims(ms: dict, layer: int, path, *, rotated: bool = True, low_E=None):
    """Figure 2 of the paper for one layer: per site, M[h, d] with heads on x and head_dim on y.
    Low-frequency dims are marked on the right edge."""
    sites = list(ms)
    fig, axes = plt.subplots(1, len(sites), figsize=(3.2 * len(sites), 3.6), squeeze=False)
    for ax, site in zip(axes[0], sites):
        m_HE = ms[site][layer]
        im = ax.imshow(m_HE.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
        ax.set_title(f"{_title(site, rotated)}, layer {layer}", fontsize=9)
        ax.set_xlabel("head")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("head dim")
        if low_E is not None:
            for d in np.flatnonzero(low_E):
                ax.plot([m_HE.shape[0] - 0.5], [d], marker="<", color="red", markersize=3, clip_on=False)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.06, label="M = L2 norm over tokens")
    fig.tight_layout()
    return _save(fig, path)


def layers_dims(ms: dict, path, *, rotated: bool = True):
    """Per site, layers x head_dim: M over its head mean, averaged over heads (bright rows that repeat
    across layers are dims that are massive in most heads)."""
    sites = list(ms)
    fig, axes = plt.subplots(1, len(sites), figsize=(3.2 * len(sites), 3.6), squeeze=False)
    for ax, site in zip(axes[0], sites):
        r_LE = head_ratio(ms[site]).mean(1)
        im = ax.imshow(r_LE.T, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
        ax.set_title(_title(site, rotated), fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylabel("head dim")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="M / head mean (avg over heads)")
    fig.tight_layout()
    return _save(fig, path)


def lowfreq_bars(summaries: dict, path, *, chance: float, baseline: dict | None = None, rotated: bool = True):
    """Per layer, the share of top-k massive mass in the lowest-frequency quarter, one bar per site;
    dots: the same for a random-init model on the same prompts (the post-RoPE bias of the paper's pitfall)."""
    sites = list(summaries)
    n_layers = len(next(iter(summaries.values()))["lowfreq_share"])
    width = 0.8 / len(sites)
    fig, ax = plt.subplots(figsize=(min(16.0, max(5.0, 0.12 * n_layers * len(sites) + 2)), 3.4))
    x = np.arange(n_layers)
    for i, site in enumerate(sites):
        share = [np.nan if s is None else s for s in summaries[site]["lowfreq_share"]]
        bars = ax.bar(x + (i - (len(sites) - 1) / 2) * width, share, width, label=_title(site, rotated))
        if baseline and site in baseline:
            base = [np.nan if s is None else s for s in baseline[site]["lowfreq_share"]]
            ax.plot(x + (i - (len(sites) - 1) / 2) * width, base, "o", ms=3, color=bars.patches[0].get_facecolor(),
                    markeredgecolor="black", markeredgewidth=0.5)
    ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance ({chance:.2f})")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("low-frequency share")
    ax.set_title("share of top-k mass in the lowest-frequency quarter" + (" (dots: random init)" if baseline else ""),
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)

"""Emergence over training, from saved probe records (probes.records) and logs: per-layer series, a
summary that dates each change against the step-0 record, and the study's figures.

The step-0 record (initial params) is the baseline: after RoPE, low-frequency dims carry more of the norm
even at init, so a value means "emerged" only against the same metric at step 0 (see PAPER.md, Pitfalls).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from minimal_lm.files import read_log
from probes.figures import mark_classes

DISRUPTION_LOG = "disruption.jsonl"
LABELS = {"rope": "RoPE", "none": "NoPE", "alibi": "ALiBi", "learned": "learned"}
_SITE_TITLES = {"q": "Q", "k": "K", "v": "V", "q_pre": "Q before RoPE", "k_pre": "K before RoPE"}


def label(scheme: str) -> str:
    return LABELS.get(scheme, scheme)


def site_title(site: str, rotated: bool) -> str:
    return f"{_SITE_TITLES[site]}{' after RoPE' if rotated and site in ('q', 'k') else ''}"


def sites_for(rotated: bool) -> tuple[str, ...]:
    """Sites worth drawing: without rotation q_pre and k_pre equal q and k."""
    return ("q", "k", "v", "q_pre", "k_pre") if rotated else ("q", "k", "v")


def read_disruption_log(run_dir) -> list[dict]:
    """Lines of run_dir/disruption.jsonl, one per step (the last written wins), by step."""
    return sorted({x["step"]: x for x in read_log(Path(run_dir) / DISRUPTION_LOG)}.values(), key=lambda x: x["step"])


def accuracy_by_kind(result: dict) -> dict:
    """{mode: {kind: {"accuracy", "correct", "n"}}} from a probes.experiment results.json record (one run,
    or {"runs": [...]}); runs of the same kind are pooled."""
    pooled: dict = {}
    for rec in result.get("runs", [result]):
        for mode, res in rec["results"].items():
            parts = res.get("by_kind") or {rec["kinds"][0]: {"correct": res["correct"], "n": rec["n"]}}
            for kind, p in parts.items():
                c = pooled.setdefault(mode, {}).setdefault(kind, {"correct": 0, "n": 0})
                c["correct"] += p["correct"]
                c["n"] += p["n"]
    return {m: {k: {**c, "accuracy": c["correct"] / c["n"]} for k, c in sorted(kinds.items())}
            for m, kinds in pooled.items()}


def series(records, site: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps [N], values [N, layers]) of one per-layer summary metric; None becomes NaN, and so does a metric
    that a record predates (e.g. unrotated_share in records written before it existed)."""
    steps = np.array([r.step for r in records], np.int64)
    rows = [r.summary[site].get(key) or [None] * len(r.summary[site]["max_ratio"]) for r in records]
    values = np.array([[np.nan if v is None else v for v in row] for row in rows], np.float64)
    return steps, values


def summarize(records, lam: float = 5.0) -> dict:
    """Per site, per layer: the max ratio (largest M over its head mean) at step 0, at the end and at its
    peak, the first step with a massive dim (ratio > lam), the step of the largest rise between two
    records, the low-frequency share of top-k mass and its share in unrotated dims (probes.massive.summarize; None
    in records that predate it), and the share of heads whose top dim has the layer's most common frequency index
    (concentration), at step 0 and at the end."""
    if not records:
        return {}
    has0 = records[0].step == 0
    out = {"steps": [r.step for r in records], "tokens_seen": [r.tokens_seen for r in records], "has_step0": has0,
           "lam": lam, "sites": {}}
    for site in records[0].summary:
        steps, ratio_NL = series(records, site, "max_ratio")
        _, low_NL = series(records, site, "lowfreq_share")
        _, unrot_NL = series(records, site, "unrotated_share")
        count_NL = series(records, site, "massive_count")[1]
        conc_NL = series(records, site, "concentration")[1] if "concentration" in records[0].summary[site] else None
        layers = []
        for layer in range(ratio_NL.shape[1]):
            r = ratio_NL[:, layer]
            above = np.flatnonzero(r > lam)
            rise = np.diff(r)
            layers.append({
                "init": float(r[0]) if has0 else None, "final": float(r[-1]), "peak": float(np.nanmax(r)),
                "peak_step": int(steps[np.nanargmax(r)]),
                "growth": float(r[-1] / r[0]) if has0 and r[0] > 0 else None,
                "massive_at_init": bool(has0 and r[0] > lam),
                "first_massive_step": int(steps[above[0]]) if len(above) else None,
                "largest_rise_step": int(steps[1 + np.argmax(rise)]) if len(rise) and rise.max() > 0 else None,
                "massive_count_init": int(count_NL[0, layer]) if has0 else None,
                "massive_count_final": int(count_NL[-1, layer]),
                "lowfreq_init": _num(low_NL[0, layer]) if has0 else None, "lowfreq_final": _num(low_NL[-1, layer]),
                "unrotated_init": _num(unrot_NL[0, layer]) if has0 else None,
                "unrotated_final": _num(unrot_NL[-1, layer]),
                "concentration_init": _num(conc_NL[0, layer]) if has0 and conc_NL is not None else None,
                "concentration_final": _num(conc_NL[-1, layer]) if conc_NL is not None else None,
                "top_freq_final": records[-1].summary[site].get("top_freq_index", [None] * (layer + 1))[layer],
            })
        out["sites"][site] = layers
    return out


def _num(x):
    return None if np.isnan(x) else float(x)


# ---- figures ------------------------------------------------------------------------------------------


def _subplots(nrows=1, ncols=1, *, figsize, **kw):
    """Like pyplot.subplots, on a Figure of its own: no backend is chosen and nothing is left open."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, path):
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return Path(path)


def _colors(n):
    return matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(n, 1)))


def loss_figure(metrics: dict, path, *, entropy: float | None = None):
    """Train loss (thin) and eval loss (dots) per step, one colour per run."""
    fig, ax = _subplots(figsize=(6.4, 3.4))
    for (name, lines), color in zip(metrics.items(), matplotlib.colormaps["tab10"].colors):
        if not lines:
            continue
        ax.plot([m["step"] for m in lines], [m["loss"] for m in lines], lw=0.8, alpha=0.7, color=color,
                label=f"{label(name)} train")
        ev = [m for m in lines if "eval_loss" in m]
        ax.plot([m["step"] for m in ev], [m["eval_loss"] for m in ev], "o-", ms=3, color=color,
                label=f"{label(name)} eval")
    if entropy is not None:
        ax.axhline(entropy, color="gray", ls="--", lw=1, label=f"unigram entropy ({entropy:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def emergence_figure(records, path, *, lam: float, chance: float, rotated: bool, title: str = "",
                     log_steps: bool = False, unrotated_chance: float | None = None, hypothetical: str = ""):
    """Max ratio (top row) and low-frequency share of top-k mass (second row) per layer against step, one
    column per site; with `unrotated_chance` (partial rotary) a third row: the share in unrotated dims. Dotted:
    each layer's step-0 value. `log_steps`: a symmetric-log step axis (linear below 1, so step 0 shows), for
    log-spaced checkpoints. `hypothetical` (a model without rotation): the label, drawn under the title."""
    sites = [s for s in sites_for(rotated) if s in records[0].summary]
    keys = ["max_ratio", "lowfreq_share"] + (["unrotated_share"] if unrotated_chance is not None else [])
    fig, axes = _subplots(len(keys), len(sites), figsize=(2.7 * len(sites), 2.4 * len(keys)), squeeze=False,
                          sharex=True)
    for col, site in enumerate(sites):
        for row, key in enumerate(keys):
            ax = axes[row, col]
            steps, v_NL = series(records, site, key)
            for layer, color in zip(range(v_NL.shape[1]), _colors(v_NL.shape[1])):
                ax.plot(steps, v_NL[:, layer], "-", marker=".", ms=3, lw=1.2, color=color, label=f"layer {layer}")
                if steps[0] == 0:
                    ax.axhline(v_NL[0, layer], color=color, ls=":", lw=1)
            if key == "max_ratio":
                ax.axhline(lam, color="red", ls="--", lw=0.8, label=f"λ = {lam:g}")
                ax.set_title(site_title(site, rotated), fontsize=9)
            else:
                level = chance if key == "lowfreq_share" else unrotated_chance
                ax.axhline(level, color="gray", ls="--", lw=0.8, label=f"chance {level:.2f}")
                ax.set_ylim(-0.02, 1.02)
            if row == len(keys) - 1:
                ax.set_xlabel("step")
            if log_steps:
                ax.set_xscale("symlog", linthresh=1)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    axes[0, 0].set_ylabel("max M / head mean")
    axes[1, 0].set_ylabel("low-freq share (top-k)" + ("\nhypothetical map" if hypothetical else ""))
    if unrotated_chance is not None:
        axes[2, 0].set_ylabel("unrotated share (top-k)")
    handles, names = axes[0, 0].get_legend_handles_labels()
    h2, n2 = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles + h2[-1:], names + n2[-1:], fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    heading = (title + "  (dotted: step 0)") if title else ""
    if hypothetical:
        heading = (heading + "\n" if heading else "") + textwrap.fill(hypothetical, 100)
    if heading:
        fig.suptitle(heading, fontsize=10 if not hypothetical else 8)
    fig.tight_layout()
    return _save(fig, path)


def comparison_figure(records_by_scheme: dict, path, *, lam: float):
    """Across schemes: the largest max ratio over layers of Q and K (after rotation) and of V, against
    step; hollow markers at step 0 are the random-init baseline."""
    sites = ("q", "k", "v")
    fig, axes = _subplots(1, len(sites), figsize=(3.3 * len(sites), 3.2), squeeze=False, sharey=True)
    for ax, site in zip(axes[0], sites):
        for (scheme, records), color in zip(records_by_scheme.items(), matplotlib.colormaps["tab10"].colors):
            if not records:
                continue
            steps, v_NL = series(records, site, "max_ratio")
            ax.plot(steps, np.nanmax(v_NL, 1), "-", marker=".", ms=3, color=color, label=label(scheme))
            if steps[0] == 0:
                ax.plot([0], [np.nanmax(v_NL[0])], "o", mfc="none", color=color, ms=7)
        ax.axhline(lam, color="red", ls="--", lw=0.8)
        ax.set_title(f"{_SITE_TITLES[site]}: largest max ratio over layers", fontsize=9)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    axes[0, 0].set_ylabel("max M / head mean")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def heatmap_figure(record, path, *, layers, rotated: bool, low_E=None, unrot_E=None, title: str = ""):
    """The paper's Figure 2 for one record: M[head, dim] per layer (rows) and site (columns); red marks
    on the right edge: the lowest-frequency quarter of RoPE dims; dashed line: where unrotated dims begin."""
    sites = [s for s in sites_for(rotated) if s in record.norms]
    fig, axes = _subplots(len(layers), len(sites), figsize=(2.5 * len(sites), 2.4 * len(layers)), squeeze=False)
    for row, layer in enumerate(layers):
        for col, site in enumerate(sites):
            ax = axes[row, col]
            m_HE = record.norms[site][layer]
            im = ax.imshow(m_HE.T, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
            ax.set_title(f"{site_title(site, rotated)}, layer {layer}", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            if rotated and site != "v":
                mark_classes(ax, m_HE.shape[0], low_E, unrot_E, markersize=2)
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.08)
        axes[row, 0].set_ylabel("head dim")
    for ax in axes[-1]:
        ax.set_xlabel("head")
    fig.suptitle(title or f"step {record.step}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def disruption_figure(logs: dict, path):
    """Accuracy per mode and kind against step, from the disruption logs of one or more runs."""
    kinds = sorted({k for lines in logs.values() for x in lines for m in x["accuracy"].values() for k in m})
    fig, axes = _subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.0), squeeze=False, sharey=True)
    styles = {"none": "-", "massive": "--", "non_massive": ":"}
    for ax, kind in zip(axes[0], kinds):
        for (scheme, lines), color in zip(logs.items(), matplotlib.colormaps["tab10"].colors):
            modes = list(dict.fromkeys(m for x in lines for m in x["accuracy"]))
            for mode in modes:
                pts = [(x["step"], x["accuracy"][mode][kind]) for x in lines if kind in x["accuracy"].get(mode, {})]
                if pts:
                    ax.plot(*zip(*pts), styles.get(mode, "-."), marker=".", color=color,
                            label=f"{label(scheme)} {mode}")
        ax.set_title(f"{kind} items", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylim(-0.03, 1.03)
    axes[0, 0].set_ylabel("accuracy")
    axes[0, -1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)

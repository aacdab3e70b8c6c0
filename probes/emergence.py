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
from matplotlib.ticker import MaxNLocator

from minimal_lm.files import read_log
from probes.figures import mark_classes, save, subplots
from probes.records import Record

DISRUPTION_LOG = "disruption.jsonl"
CLASS_LOG = "token_classes.jsonl"
CLASS_NAMES = ("contextual", "parametric", "other", "all")
LABELS = {"rope": "RoPE", "none": "NoPE", "alibi": "ALiBi", "learned": "learned"}
_SITE_TITLES = {"q": "Q", "k": "K", "v": "V", "q_pre": "Q before RoPE", "k_pre": "K before RoPE"}


def run_name(scheme: str, seed: int, seeds) -> str:
    """A run directory's name in a study (probes.study): the scheme for the first seed of `seeds` (as in studies
    before seeds), else <scheme>_seed<seed>."""
    return scheme if seed == seeds[0] else f"{scheme}_seed{seed}"


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


def read_class_log(run_dir) -> list[dict]:
    """Lines of run_dir/token_classes.jsonl (probes.study): {"step", "tokens_seen", "classes": {mode: {class:
    {"loss", "acc", "n"}}}}, one per step (the last written wins), by step."""
    return sorted({x["step"]: x for x in read_log(Path(run_dir) / CLASS_LOG)}.values(), key=lambda x: x["step"])


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
    out["sinks"] = summarize_sinks(records)
    return out


def sink_series(records) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps [N], sink share [N], mean first-token mass per layer [N, layers]); NaN for records written before
    sinks were recorded (Record.sinks None)."""
    steps = np.array([r.step for r in records], np.int64)
    n_layers = max((len(r.sinks["mean_mass"]) for r in records if r.sinks), default=0)
    share = np.array([r.sinks["sink_share"] if r.sinks else np.nan for r in records], np.float64)
    mass = np.array([r.sinks["mean_mass"] if r.sinks else [np.nan] * n_layers for r in records], np.float64)
    return steps, share, mass.reshape(len(records), n_layers)


def summarize_sinks(records) -> dict | None:
    """Attention sinks over training (probes.sinks): the share of heads whose first-token mass exceeds eps and,
    per layer, the sink heads and mean first-token mass, at the first and last records that hold them, and the
    share's peak; None when no record holds them."""
    held = [r for r in records if r.sinks]
    if not held:
        return None
    first, last = held[0], held[-1]
    steps, share, _ = sink_series(held)
    return {"eps": last.sinks["eps"], "recorded": len(held), "missing": len(records) - len(held),
            "first_step": first.step, "last_step": last.step, "step0": first.step == 0,
            "share_first": first.sinks["sink_share"], "share_last": last.sinks["sink_share"],
            "share_peak": float(share.max()), "peak_step": int(steps[share.argmax()]),
            "heads": len(first.sinks["first_token_mass"][0]),
            "layers": [{"mass_first": a, "mass_last": b, "sinks_first": c, "sinks_last": d}
                       for a, b, c, d in zip(first.sinks["mean_mass"], last.sinks["mean_mass"],
                                             first.sinks["sink_heads"], last.sinks["sink_heads"])]}


def _num(x):
    return None if np.isnan(x) else float(x)


# ---- figures ------------------------------------------------------------------------------------------


def _colors(n):
    return matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, max(n, 1)))


def loss_figure(metrics: dict, path, *, entropy: float | None = None):
    """Train loss (thin) and eval loss (dots) per step, one colour per run."""
    fig, ax = subplots(figsize=(6.4, 3.4))
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
    return save(fig, path, dpi=100)


def emergence_figure(records, path, *, lam: float, chance: float, rotated: bool, title: str = "",
                     log_steps: bool = False, unrotated_chance: float | None = None, hypothetical: str = ""):
    """Max ratio (top row) and low-frequency share of top-k mass (second row) per layer against step, one
    column per site; with `unrotated_chance` (partial rotary) a third row: the share in unrotated dims. Dotted:
    each layer's step-0 value. `log_steps`: a symmetric-log step axis (linear below 1, so step 0 shows), for
    log-spaced checkpoints. `hypothetical` (a model without rotation): the label, drawn under the title."""
    sites = [s for s in sites_for(rotated) if s in records[0].summary]
    keys = ["max_ratio", "lowfreq_share"] + (["unrotated_share"] if unrotated_chance is not None else [])
    fig, axes = subplots(len(keys), len(sites), figsize=(2.7 * len(sites), 2.4 * len(keys)), squeeze=False,
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
    return save(fig, path, dpi=100)


def seed_curves(runs: list, site: str, key: str = "max_ratio") -> tuple[np.ndarray, np.ndarray]:
    """(steps [N], values [seeds, N]) of the largest `key` over layers of one site, for the record series of
    several seeds, on the steps that every seed has recorded."""
    runs = [rs for rs in runs if rs]
    if not runs:
        return np.zeros(0, np.int64), np.zeros((0, 0))
    common = sorted(set.intersection(*({r.step for r in rs} for rs in runs)))
    rows = []
    for rs in runs:
        keep = [r for r in rs if r.step in set(common)]
        rows.append(np.nanmax(series(keep, site, key)[1], 1) if keep else np.zeros(0))
    return np.array(common, np.int64), np.array(rows, np.float64).reshape(len(runs), len(common))


def comparison_figure(records_by_scheme: dict, path, *, lam: float, sites=("q", "k", "v")):
    """Across schemes: the largest max ratio over layers of Q and K (after rotation) and of V, against
    step; hollow markers at step 0 are the random-init baseline. A scheme's value is its records, or a list of
    record series (one per seed): then each seed is a thin line, the mean a thick one over a min-max band."""
    fig, axes = subplots(1, len(sites), figsize=(3.3 * len(sites), 3.2), squeeze=False, sharey=True)
    for ax, site in zip(axes[0], sites):
        for (scheme, records), color in zip(records_by_scheme.items(), matplotlib.colormaps["tab10"].colors):
            if not records:
                continue
            if isinstance(records[0], (list, tuple)) and not isinstance(records[0], Record):
                if not any(records):
                    continue
                steps, v_SN = seed_curves(records, site)
                for row in v_SN:
                    ax.plot(steps, row, "-", lw=0.6, alpha=0.5, color=color)
                ax.fill_between(steps, v_SN.min(0), v_SN.max(0), color=color, alpha=0.15, lw=0)
                ax.plot(steps, v_SN.mean(0), "-", lw=1.6, color=color, label=f"{label(scheme)} ({len(v_SN)} seeds)")
                if len(steps) and steps[0] == 0:
                    ax.plot([0], [v_SN[:, 0].mean()], "o", mfc="none", color=color, ms=7)
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
    return save(fig, path, dpi=100)


def heatmap_figure(record, path, *, layers, rotated: bool, low_E=None, unrot_E=None, title: str = ""):
    """The paper's Figure 2 for one record: M[head, dim] per layer (rows) and site (columns); red marks
    on the right edge: the lowest-frequency quarter of RoPE dims; dashed line: where unrotated dims begin."""
    sites = [s for s in sites_for(rotated) if s in record.norms]
    fig, axes = subplots(len(layers), len(sites), figsize=(2.5 * len(sites), 2.4 * len(layers)), squeeze=False)
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
    return save(fig, path, dpi=100)


def disruption_figure(logs: dict, path):
    """Accuracy per mode and kind against step, from the disruption logs of one or more runs."""
    kinds = sorted({k for lines in logs.values() for x in lines for m in x["accuracy"].values() for k in m})
    fig, axes = subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.0), squeeze=False, sharey=True)
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
    return save(fig, path, dpi=100)


def class_figure(logs_by_scheme: dict, path, *, classes=("contextual", "parametric")):
    """Loss (top row) and top-1 accuracy (bottom row) of held-out tokens per class (columns) against step, one
    colour per scheme, one line style per mode (solid: none, dashed: massive, dotted: non-massive);
    `logs_by_scheme` maps a scheme to its token-class logs (read_class_log), one per seed: the mean over seeds,
    with a min-max band when there are several."""
    styles = {"none": "-", "massive": "--", "non_massive": ":"}
    fig, axes = subplots(2, len(classes), figsize=(3.6 * len(classes), 5.2), squeeze=False, sharex=True)
    for (scheme, logs), color in zip(logs_by_scheme.items(), matplotlib.colormaps["tab10"].colors):
        logs = [lg for lg in logs if lg]
        if not logs:
            continue
        steps = sorted(set.intersection(*({x["step"] for x in lg} for lg in logs)))
        modes = list(dict.fromkeys(m for lg in logs for x in lg for m in x["classes"]))
        for col, cls in enumerate(classes):
            for row, key in enumerate(("loss", "acc")):
                ax = axes[row, col]
                for mode in modes:
                    v_SN = np.array([[_num_or_nan(x["classes"].get(mode, {}).get(cls, {}).get(key))
                                      for x in lg if x["step"] in steps] for lg in logs], np.float64)
                    if not v_SN.size or np.isnan(v_SN).all():
                        continue
                    if len(logs) > 1:
                        ax.fill_between(steps, np.nanmin(v_SN, 0), np.nanmax(v_SN, 0), color=color, alpha=0.12, lw=0)
                    ax.plot(steps, np.nanmean(v_SN, 0), styles.get(mode, "-."), marker=".", ms=3, color=color,
                            label=f"{label(scheme)} {mode}")
                if row == 0:
                    ax.set_title(f"{cls} tokens", fontsize=9)
                else:
                    ax.set_xlabel("step")
                    ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_ylabel("loss (nats/token)")
    axes[1, 0].set_ylabel("top-1 accuracy")
    axes[0, -1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save(fig, path, dpi=100)


def _num_or_nan(x):
    return np.nan if x is None else float(x)


def sinks_figure(records_by_scheme: dict, path, *, lam: float):
    """Sinks beside Q/K concentration, per scheme against step: the largest max ratio over layers of Q and of K
    (after rotation), and the share of heads whose first-token attention mass exceeds eps (Gu et al.). Records
    without sink statistics leave a gap; hollow markers at step 0 are the random-init baseline."""
    eps = next((r.sinks["eps"] for rs in records_by_scheme.values() for r in rs if r.sinks), None)
    fig, axes = subplots(1, 3, figsize=(10.0, 3.2), squeeze=False)
    colors = matplotlib.colormaps["tab10"].colors
    for (scheme, records), color in zip(records_by_scheme.items(), colors):
        if not records:
            continue
        for ax, site in zip(axes[0, :2], ("q", "k")):
            steps, v_NL = series(records, site, "max_ratio")
            ax.plot(steps, np.nanmax(v_NL, 1), "-", marker=".", ms=3, color=color, label=label(scheme))
            if steps[0] == 0:
                ax.plot([0], [np.nanmax(v_NL[0])], "o", mfc="none", color=color, ms=7)
        steps, share, _ = sink_series(records)
        ax = axes[0, 2]
        ax.plot(steps, share, "-", marker=".", ms=3, color=color, label=label(scheme))
        if steps[0] == 0 and not np.isnan(share[0]):
            ax.plot([0], [share[0]], "o", mfc="none", color=color, ms=7)
    for ax, site in zip(axes[0, :2], ("q", "k")):
        ax.axhline(lam, color="red", ls="--", lw=0.8)
        ax.set_title(f"{_SITE_TITLES[site]}: largest max ratio over layers", fontsize=9)
        ax.set_ylabel("max M / head mean")
    axes[0, 2].set_title("attention sinks: share of heads with\nfirst-token mass > "
                         + (f"{eps:g}" if eps is not None else "eps (not recorded)"), fontsize=9)
    axes[0, 2].set_ylim(-0.02, 1.02)
    axes[0, 2].set_ylabel("sink share")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return save(fig, path, dpi=100)

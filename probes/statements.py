"""The study report's statements across seeds (probes.report calls them): per scheme and site the largest max
ratio over layers against tokens seen, the first step a dim crossed lambda, the low-frequency share against
step 0 and the attention-sink share beside it; the RoPE / NoPE ratio of Q and K concentration with its seed
spread (V for comparison); which scheme differences exceed the seed spread; and the contextual / parametric
token losses under disruption (probes.token_classes, the study's token_classes.jsonl).

Each function takes `seed_data`: scheme -> [one dict per seed as probes.report._load returns it, or None for a
seed not trained yet]. A value over seeds is written as its mean with the [min, max] over seeds beside it.
"""
from __future__ import annotations

import numpy as np

from probes import emergence as em
from probes.html import Table

MODES = ("none", "massive", "non_massive")


def spread(values, digits: int = 2, sign: bool = False) -> str | None:
    """'mean' for one value, 'mean [min, max]' for several (`sign`: with a + or -); None when there are none."""
    v = [x for x in values if x is not None and not np.isnan(x)]
    if not v:
        return None
    f = f"{{:{'+' if sign else ''}.{digits}f}}".format
    return f(np.mean(v)) if len(v) == 1 else f"{f(np.mean(v))} [{f(min(v))}, {f(max(v))}]"


def run_stats(d) -> dict | None:
    """One run's statements: per site the largest max ratio over layers at step 0, at the end and at its peak,
    the first step at which a dim of any layer was above lambda (None: none was) and the layers in which one was,
    the low-frequency share (mean over layers) at step 0 and at the end; the sink share at step 0 and at the end;
    tokens seen."""
    s = d["summary"] if d else None
    if not s or not s["has_step0"] or len(s["steps"]) < 2:
        return None
    sites = {}
    for site, layers in s["sites"].items():
        firsts = [y["first_massive_step"] for y in layers if y["first_massive_step"] is not None]
        low = lambda key: [y[key] for y in layers if y[key] is not None]  # noqa: E731
        sites[site] = {"init": max(y["init"] for y in layers), "final": max(y["final"] for y in layers),
                       "peak": max(y["peak"] for y in layers), "first": min(firsts) if firsts else None,
                       "layers": [i for i, y in enumerate(layers) if y["first_massive_step"] is not None],
                       "low_init": float(np.mean(low("lowfreq_init"))) if low("lowfreq_init") else None,
                       "low_final": float(np.mean(low("lowfreq_final"))) if low("lowfreq_final") else None}
    sinks = s.get("sinks")
    return {"step": s["steps"][-1], "tokens": s["tokens_seen"][-1], "sites": sites,
            "sink_init": sinks["share_first"] if sinks and sinks["step0"] else None,
            "sink_final": sinks["share_last"] if sinks else None, "rotated": d["freq"]["rotated"]}


def _stats(seed_data):
    return {n: [x for x in map(run_stats, ds) if x] for n, ds in seed_data.items()}


def first_text(firsts, none: str = "none did", layers=None) -> str:
    """First steps above lambda, one per seed ("; " between them, None: none was), or `none` when no seed had one;
    with `layers` (one list per seed), each step followed by the layers in which a dim was above lambda."""
    if all(f is None for f in firsts):
        return none

    def one(f, ls):
        if f is None:
            return "none"
        where = f"layer{'s' * (len(ls) > 1)} {', '.join(map(str, ls))}" if ls else ""
        if f == 0:
            return f"0 (at init{', ' + where if where else ''})"
        return f"{f} ({where})" if where else str(f)

    return "; ".join(one(f, ls) for f, ls in zip(firsts, layers or [None] * len(firsts)))


QK_SITES = ("q", "k", "q_pre", "k_pre")


def first_crossing(stats: dict, sites=QK_SITES) -> int | None:
    """One run's first step (run_stats) at which a dim of any layer of any of `sites` was above lambda; None: none
    was. By default Q and K, before and after rotation."""
    firsts = [stats["sites"][s]["first"] for s in sites if s in stats["sites"]]
    firsts = [f for f in firsts if f is not None]
    return min(firsts) if firsts else None


def sites_table(seed_data: dict, lam: float) -> Table | None:
    """Per scheme and site: the statements of run_stats over seeds."""
    rows = []
    for n, stats in _stats(seed_data).items():
        if not stats:
            continue
        for i, site in enumerate(em.sites_for(stats[0]["rotated"])):
            x = [s["sites"][site] for s in stats if site in s["sites"]]
            if not x:
                continue
            sink = ([spread([s["sink_init"] for s in stats]), spread([s["sink_final"] for s in stats])] if i == 0
                    else ["", ""])
            rows.append([em.label(n), site, len(x), f"{stats[0]['tokens']:,}", spread([y["init"] for y in x]),
                         spread([y["final"] for y in x]), spread([y["peak"] for y in x]),
                         first_text([y["first"] for y in x]), spread([y["low_init"] for y in x]),
                         spread([y["low_final"] for y in x]), *sink])
    if not rows:
        return None
    return Table(["scheme", "site", "seeds", "tokens seen", "max ratio @0", "end", "peak", f"first step > λ={lam:g}",
                  "low-freq share @0", "end", "sink share @0", "end"], rows,
                 caption="Per scheme and site: the largest max ratio over layers (mean [min, max] over seeds), the "
                         "first step at which a dim of any layer exceeded λ (per seed), the low-frequency share of "
                         "top-k mass (mean over layers) and the share of attention-sink heads, at step 0 and the end")


def site_paragraphs(seed_data: dict, lam: float, layers: bool = False) -> list[str]:
    """One sentence per scheme from run_stats, then the RoPE / NoPE ratio and the differences beyond the spread;
    with `layers`, each first step above lambda names the layers that crossed it (the report's summary with
    several seeds, where these sentences replace seed 0's)."""
    out = []
    for n, stats in _stats(seed_data).items():
        if not stats:
            continue
        sites = em.sites_for(stats[0]["rotated"])
        ratios = "; ".join(f"{site} {spread([s['sites'][site]['init'] for s in stats])} → "
                           f"{spread([s['sites'][site]['final'] for s in stats])}" for site in sites)
        crossed = [f"{site} at step "
                   + first_text([s["sites"][site]["first"] for s in stats],
                                layers=[s["sites"][site]["layers"] for s in stats] if layers else None)
                   for site in sites
                   if any(s["sites"][site]["first"] is not None for s in stats)]
        low = "; ".join(f"{site} {spread([s['sites'][site]['low_init'] for s in stats])} → "
                        f"{spread([s['sites'][site]['low_final'] for s in stats])}" for site in sites if site != "v")
        out.append(f"{em.label(n)} ({len(stats)} seed{'s' * (len(stats) > 1)}, {stats[0]['tokens']:,} tokens seen): "
                   f"largest max ratio over layers, step 0 → end: {ratios}. "
                   + (f"A dim crossed λ = {lam:g}: {', '.join(crossed)} (per seed)." if crossed else
                      f"No dim of any site crossed λ = {lam:g} in any seed.")
                   + f" Low-frequency share, step 0 → end: {low}; attention-sink share "
                   f"{spread([s['sink_init'] for s in stats])} → {spread([s['sink_final'] for s in stats])}.")
    out += [t for t in (rope_nope_paragraph(seed_data), differences_paragraph(seed_data)) if t]
    return out


RATIO_SITES = {"q": "q", "k": "k", "v": "v", "q_pre": "q", "k_pre": "k"}
"""RoPE site -> the NoPE site it is divided by (NoPE's Q and K are not rotated: its q_pre, k_pre equal q, k)."""


def rope_nope_ratios(seed_data: dict) -> dict[str, list[float]]:
    """Per RoPE site (RATIO_SITES), the RoPE / NoPE ratio of the final largest max ratio over layers, one per seed
    that both schemes have trained (paired by seed: the k-th seed of one with the k-th of the other); {} when
    there is no such pair."""
    pairs = [(a, b) for a, b in zip(map(run_stats, seed_data.get("rope") or []),
                                    map(run_stats, seed_data.get("none") or [])) if a and b]
    if not pairs:
        return {}
    return {site: [a["sites"][site]["final"] / b["sites"][other]["final"] for a, b in pairs]
            for site, other in RATIO_SITES.items()}


def rope_nope_paragraph(seed_data: dict) -> str:
    """The RoPE / NoPE ratio of the final largest max ratio over layers, paired by seed, with V's beside it."""
    ratios = rope_nope_ratios(seed_data)
    if not ratios:
        return ""
    part = lambda site: spread(ratios[site])  # noqa: E731
    n = len(ratios["q"])
    return (f"RoPE / NoPE ratio of the largest max ratio over layers at the end (paired by seed, {n} pair"
            f"{'s' * (n > 1)}): Q {part('q')}, K {part('k')} after rotation; before rotation Q "
            f"{part('q_pre')}, K {part('k_pre')}; V {part('v')} for comparison (V is never rotated: "
            "a ratio near 1 there says the schemes' difference is not one of scale). Above 1 means RoPE concentrates "
            "more.")


def differences_paragraph(seed_data: dict) -> str:
    """Which schemes differ in the final largest Q / K / V max ratio by more than the seed spread (every seed of
    one above every seed of the other); with one seed none is called."""
    stats = {n: s for n, s in _stats(seed_data).items() if s}
    if len(stats) < 2:
        return ""
    seeds = min(len(s) for s in stats.values())
    if seeds < 2:
        return ("One seed per scheme: there is no seed spread to compare the schemes' differences with, so none is "
                "called here (run with study.seeds=0,1,2 to get one).")
    called, within = [], []
    names = list(stats)
    for site in ("q", "k", "v"):
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                va = [s["sites"][site]["final"] for s in stats[a]]
                vb = [s["sites"][site]["final"] for s in stats[b]]
                hi, lo = (a, b) if np.mean(va) >= np.mean(vb) else (b, a)
                vh, vl = (va, vb) if hi == a else (vb, va)
                text = f"{site.upper()} {em.label(hi)} > {em.label(lo)}"
                (called if min(vh) > max(vl) else within).append(text)
    return (f"Differences between schemes in the final largest max ratio, called only where every seed of one is "
            f"above every seed of the other ({seeds}+ seeds each): "
            + (", ".join(called) if called else "none") + ". Within the seed spread (not called): "
            + (", ".join(within) if within else "none") + ".")


# ---- contextual / parametric tokens ---------------------------------------------------------------------


def _final_classes(ds) -> list[dict]:
    return [d["classes"][-1] for d in ds if d and d.get("classes")]


def classes_table(seed_data: dict) -> Table | None:
    """At each scheme's last token-class line: loss and top-1 accuracy per class and mode, over seeds."""
    rows = []
    for n, ds in seed_data.items():
        finals = _final_classes(ds)
        if not finals:
            continue
        modes = [m for m in MODES if m in finals[0]["classes"]]
        for cls in em.CLASS_NAMES:
            get = lambda m, key: [f["classes"].get(m, {}).get(cls, {}).get(key) for f in finals]  # noqa: E731
            rows.append([em.label(n), finals[0]["step"], len(finals), cls, spread(get("none", "n"), 0),
                         *(spread(get(m, "loss")) if m in modes else None for m in MODES),
                         *(spread([None if a is None else 100 * a for a in get(m, "acc")], 1) if m in modes else None
                           for m in MODES)])
    if not rows:
        return None
    return Table(["scheme", "step", "seeds", "class", "tokens", "loss none", "massive", "non_massive", "top-1 % none",
                  "massive", "non_massive"], rows,
                 caption="Held-out next-token loss (nats) and top-1 accuracy per token class at the last step: intact, "
                         "massive and as many non-massive Q/K dims per head disrupted (mean [min, max] over seeds). "
                         "Contextual: the bigram occurred earlier in the document; parametric: it did not, but is "
                         "frequent in the train split; other: neither")


def classes_paragraph(seed_data: dict) -> str:
    """The Table-1 contrast on every token: how much disrupting the massive vs the non-massive dims raises the
    contextual and the parametric loss, per scheme, with the spread over seeds."""
    parts = []
    for n, ds in seed_data.items():
        finals = _final_classes(ds)
        if not finals or "none" not in finals[0]["classes"]:
            continue
        delta = lambda m, cls: [f["classes"][m][cls]["loss"] - f["classes"]["none"][cls]["loss"]  # noqa: E731
                                for f in finals if m in f["classes"] and f["classes"][m][cls]["loss"] is not None]
        base = lambda cls: spread([f["classes"]["none"][cls]["loss"] for f in finals])  # noqa: E731
        rises = lambda cls: " vs ".join(f"{spread(delta(m, cls), sign=True)} {m.replace('_', '-')}"  # noqa: E731
                                        for m in MODES[1:] if m in finals[0]["classes"])
        parts.append(f"{em.label(n)}: contextual {base('contextual')} nats" + (f", {rises('contextual')}" if
                     rises("contextual") else "") + f"; parametric {base('parametric')}"
                     + (f", {rises('parametric')}" if rises("parametric") else ""))
    if not parts:
        return "Token classes: not measured (the synthetic corpus, study.class_rows=0, or not run yet)."
    return ("Contextual / parametric held-out tokens at the end (loss of the intact model, then its rise when the "
            "massive or as many non-massive Q/K dims are disrupted; the paper's claim 4 predicts a large rise for "
            "contextual tokens under massive disruption only): " + "; ".join(parts) + ".")

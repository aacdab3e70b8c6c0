"""`python -m probes massive`: norm matrices of Q, K, V and attention sinks (first-token attention mass per
layer and head) for a model and prompts, written as npz, json, figures and index.html."""
from __future__ import annotations

import argparse
import json
import shlex
from collections import Counter
from pathlib import Path

import jax
import numpy as np

from minimal_lm import ModelConfig, init_params
from minimal_lm.cli import STRICT_HELP
from probes import figures, prompts
from probes.html import Figure, Section, Table, write_index
from probes.massive import PROBE_SITES, PROJ_SITES, check_sites, frequency_map, norm_matrices, probe_sites, summarize
from probes.sinks import EPS, first_token_mass, sink_summary

PITFALL = ("After RoPE, per-dim norms lean toward low-frequency dims even in an untrained model (a fast pair "
           "spreads its mass over both of its dims, a slow pair keeps it where it was), so read the low-frequency "
           "share of q and k against q_pre and k_pre and against the random-init dots before calling it learned.")


def massive_report(params, cfg: ModelConfig, token_lists: list[list[int]], out_dir, *, sites=None,
                   lam: float = 5.0, k: int = 1, layers=None, batch_size: int = 8, pad_id: int = 0,
                   init_baseline: bool = False, seed: int = 0, source: str = "", settings: dict | None = None,
                   progress: bool = True, eps: float = EPS) -> dict:
    """Measure M for every layer and site and the first-token attention mass per layer and head (sinks: heads
    above eps), write massive.npz, massive.json, PNG figures and index.html into out_dir, and return the JSON
    record. `settings` are recorded with the ones used here."""
    sites = check_sites(probe_sites(cfg) if sites is None else sites)
    layers = check_layers(layers, cfg.num_layers)
    if k < 1 or k > cfg.dim_per_head:
        raise ValueError(f"top-k={k}: expected 1 <= k <= head_dim={cfg.dim_per_head}")
    if not lam > 0:
        raise ValueError(f"lambda={lam}: expected a positive number")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def measure(p, desc_progress):
        batches = lambda: prompts.left_padded_batches(token_lists, batch_size, pad_id)
        total = prompts.num_batches(len(token_lists), batch_size)
        ms, n_tokens = norm_matrices(p, cfg, batches(), sites, total=total, progress=desc_progress)
        alpha_LH, n_queries = first_token_mass(p, cfg, batches(), total=total, progress=desc_progress)
        return ms, n_tokens, sink_summary(alpha_LH, eps) | {"queries": n_queries, "first_query_included": True}

    ms, n_tokens, sinks = measure(params, progress)
    np.savez(out / "massive.npz", **ms)
    freq = frequency_map(cfg)
    record = {
        "model": {"source": str(source), "rotation": "rope" if freq["rotated"] else "none",
                  "position": cfg.position, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
                  "num_kv_heads": cfg.kv_heads, "head_dim": cfg.dim_per_head, "rotary_dim": cfg.rotary_dim},
        "settings": {"sites": list(sites), "lambda": lam, "top_k": k, "layers": layers,
                     "prompts": len(token_lists), "tokens": n_tokens, "batch_size": batch_size, **(settings or {})},
        "frequency": frequency_record(freq),
    }
    summaries = {site: summarize(ms[site], freq, lam, k) for site in sites}
    record.update(summaries)
    record["sinks"] = sinks
    baseline = None
    if init_baseline:
        m0, _, sinks0 = measure(jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(seed)), False)
        baseline = {site: summarize(m0[site], freq, lam, k) for site in sites}
        kept = ("lowfreq_share", "unrotated_share", "massive_count", "max_ratio")
        record["init_baseline"] = {"seed": seed, "init_std": cfg.init_std,
                                   **{site: {key: baseline[site][key] for key in kept} for site in sites},
                                   "sinks": {key: sinks0[key] for key in ("sink_share", "mean_mass", "sink_heads")}}
    (out / "massive.json").write_text(json.dumps(record, indent=1))
    _figures_and_html(out, ms, record, summaries, baseline, freq)
    return record


def frequency_record(freq: dict) -> dict:
    """The "frequency" entry of massive.json: the map, each class's dims and chance share, and the label
    ("" for a RoPE model; for a model without rotation: "hypothetical: this model does not rotate ...")."""
    rec = {"freq_index": freq["freq_E"].tolist(), "lowfreq_dims": np.flatnonzero(freq["low_E"]).tolist(),
           "unrotated_dims": np.flatnonzero(freq["unrot_E"]).tolist(), "rotary_dim": freq["rotary_dim"],
           "chance_share": freq["chance_share"], "chance_lowfreq": freq["chance_lowfreq"],
           "chance_unrotated": freq["chance_unrotated"], "chance_lowfreq_rotated": freq["chance_lowfreq_rotated"],
           "hypothetical": freq["hypothetical"], "label": freq["label"],
           "note": ("rotate_half layout: dim j has frequency index j mod rotary_dim/2, -1 if unrotated (its own class, "
                    "frequency zero); the low-frequency quarter is the largest quarter of the rotated dims' indices; "
                    "lowfreq_share and unrotated_share are shares of the selected mass over all dims, each with its "
                    "chance share = its dims / head_dim; lowfreq_share_rotated is the low-frequency share of the "
                    "selected mass in rotated dims (chance_lowfreq_rotated)")
           + ("" if freq["rotated"] else "; this model has no rotation: the same map is reported for comparison "
              "with RoPE models")}
    return rec


def check_layers(layers, num_layers: int) -> list[int]:
    if layers is None:
        return sorted({0, num_layers // 2, num_layers - 1})
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"layers={','.join(map(str, layers))}: layer(s) {bad} out of range 0..{num_layers - 1}")
    return list(layers)


def _figures_and_html(out, ms, record, summaries, baseline, freq):
    rotated, sites, layers = freq["rotated"], record["settings"]["sites"], record["settings"]["layers"]
    partial = bool(freq["unrot_E"].any())
    marks = ("red marks: lowest-frequency quarter" + ("; dashed line: the unrotated dims start above it"
                                                       if partial else "")) if rotated else (
        "no frequency marks: " + freq["label"])
    figs = [Figure(figures.heads_dims(ms, i, out / f"heads_dims_layer{i}.png", rotated=rotated,
                                      low_E=freq["low_E"] if rotated else None,
                                      unrot_E=freq["unrot_E"] if rotated else None).name,
                   f"Layer {i}: M[head, dim] per site ({marks})") for i in layers]
    chances = figures.chance_text(freq)
    summary_figs = [
        Figure(figures.layers_dims(ms, out / "layers_dims.png", rotated=rotated).name,
               "Per layer and dim: M over its head mean, averaged over heads."),
        Figure(figures.lowfreq_bars(summaries, out / "lowfreq_share.png", chance=freq["chance_lowfreq"],
                                    baseline=baseline, rotated=rotated,
                                    unrotated_chance=freq["chance_unrotated"] if partial else None,
                                    hypothetical=freq["label"]).name,
               "Share of top-k mass in the lowest-frequency quarter of the rotated dims"
               + (" and in the unrotated dims" if partial else "") + f"; dashed: chance ({chances})."
               + ("" if rotated else " " + freq["label"][0].upper() + freq["label"][1:] + ".")),
    ]
    s = record["settings"]
    unrot_cols = ["unrotated share", "unrotated (init)"] if partial else []
    tables = [Table(["layer", "massive", "max ratio", "concentration", "top freq", "low-freq share",
                     "share (init)", *unrot_cols, "top-1 dims (count)"],
                    [[i, summaries[site]["massive_count"][i], summaries[site]["max_ratio"][i],
                      summaries[site]["concentration"][i], summaries[site]["top_freq_index"][i],
                      summaries[site]["lowfreq_share"][i],
                      baseline[site]["lowfreq_share"][i] if baseline else None,
                      *([summaries[site]["unrotated_share"][i],
                         baseline[site]["unrotated_share"][i] if baseline else None] if partial else []),
                      _top_dims(summaries[site]["top1_dims"][i])] for i in range(len(summaries[site]["max_ratio"]))],
                    caption=site) for site in sites]
    m = record["model"]
    rotation = m["rotation"] + (f" on {m['rotary_dim']} of {m['head_dim']} dims per head"
                                if partial and rotated else "")
    intro = [f"Model: {m['source']} ({m['num_layers']} layers, {m['num_heads']} heads, {m['num_kv_heads']} KV heads, "
             f"head_dim {m['head_dim']}, rotation: {rotation}).",
             f"{s['prompts']} prompts, {s['tokens']} tokens. Massive: M > {s['lambda']} x head mean "
             f"(count per layer); top-k = {s['top_k']} per head for the low-frequency share.",
             "Frequency classes: " + figures.classes_text(freq) + ".", PITFALL]
    if not rotated:
        intro.insert(1, freq["label"][0].upper() + freq["label"][1:] + ": its low-frequency share says where a RoPE "
                     "model's slow pairs would be, not anything this model rotates.")
    write_index(out, "Massive values in Q, K and V, and attention sinks", [
        Section("Heads x head dim", figures=figs),
        Section("Summary", figures=summary_figs),
        _sinks_section(out, record, rotated),
        Section("Numbers per layer", paragraphs=[
            "concentration: share of heads whose top dim has the layer's most common frequency index "
            "(top freq; an unrotated dim j is its own index, head_dim + j); max ratio: largest M over its head mean."],
            tables=tables),
        *([Section("Command", code=s["command"])] if s.get("command") else []),
    ], intro=intro)


def _sinks_section(out, record, rotated) -> Section:
    """First-token attention mass per layer and head (heatmap) and, per layer, the sinks beside the largest max
    ratio of Q and K: sinks and Q/K concentration side by side."""
    s, base = record["sinks"], (record.get("init_baseline") or {}).get("sinks")
    heatmap = figures.first_token_heatmap(s["first_token_mass"], out / "first_token_mass.png", eps=s["eps"],
                                          baseline_share=base["sink_share"] if base else None)
    qk = [site for site in ("q", "k") if site in record]
    rows = [[i, s["mean_mass"][i], s["max_mass"][i], f"{s['sink_heads'][i]} of {len(s['first_token_mass'][i])}",
             s["sink_share_layers"][i], *([base["sink_heads"][i]] if base else []),
             *(record[site]["max_ratio"][i] for site in qk)] for i in range(len(s["mean_mass"]))]
    head = ["layer", "mean first-token mass", "max", f"sink heads (> {s['eps']:g})", "sink share",
            *(["sink heads (init)"] if base else []), *(f"{_title(site, rotated)} max ratio" for site in qk)]
    return Section("Attention sinks", paragraphs=[
        f"Share of heads whose mean attention on the first real token of each prompt exceeds eps = {s['eps']:g}: "
        f"{s['sink_share']:.3f}" + (f" (random init {base['sink_share']:.3f})" if base else "")
        + f", over {s['queries']} query tokens (the first query, which sees only itself, included, as in Gu et al. "
        "2025, who find 18-33% of heads are sinks in ~60M models after 5B tokens)."],
        figures=[Figure(heatmap.name, "First-token attention mass per layer and head; red boxes: sinks.")],
        tables=[Table(head, rows, caption="Attention sinks per layer, beside the largest max ratio of Q and K")])


def _title(site, rotated):
    return {"q": "Q", "k": "K"}[site] + (" (after RoPE)" if rotated else "")


def _top_dims(top_H) -> str:
    return ", ".join(f"{d}×{c}" for d, c in Counter(top_H).most_common(3))


def register(subparsers) -> None:
    p = subparsers.add_parser("massive", help="massive values in Q, K, V per layer and head",
                              description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="HF checkpoint directory or run directory")
    p.add_argument("--out", required=True, help="output directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text-file", help="plain text; each paragraph (blank-line separated) is a prompt")
    src.add_argument("--prompts", help='JSONL: a string, or {"prompt"|"messages"|"tokens": ...} per line')
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the checkpoint's chat template")
    p.add_argument("--sites", help=f"comma list of {', '.join(PROBE_SITES + PROJ_SITES)} (default: the first five, "
                   "and q_proj, k_proj for a model with q/k norms)")
    p.add_argument("--lambda", dest="lam", type=float, default=5.0, help="threshold: M > lambda * head mean")
    p.add_argument("--top-k", type=int, default=1, help="top-k dims per head")
    p.add_argument("--layers", default=None, help="layers to draw (comma list); default first, middle, last")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=None, help="truncate prompts (default: model max_seq_len)")
    p.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--init-baseline", action="store_true",
                   help="also measure a random-init model of the same config on the same prompts")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-init baseline")
    p.add_argument("--eps", type=float, default=EPS,
                   help="attention-sink threshold: a head is a sink when its mean first-token mass exceeds it")
    p.set_defaults(func=run)


def run(args) -> None:
    from minimal_lm import from_pretrained

    try:
        layers = None if args.layers is None else [int(x) for x in args.layers.split(",")]
    except ValueError:
        raise ValueError(f"--layers={args.layers!r}: expected comma-separated integers") from None
    if args.batch_size < 1 or (args.max_len is not None and args.max_len < 1):
        raise ValueError(f"--batch-size={args.batch_size}, --max-len={args.max_len}: expected positive integers")
    cfg, params, tokenizer = from_pretrained(args.model, dtype=args.dtype, strict=args.strict)
    items = (prompts.read_text_file(args.text_file) if args.text_file else
             prompts.read_jsonl(args.prompts) if args.prompts else list(prompts.DEFAULT_PROMPTS))
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"--chat: {args.model} has no chat template (no chat_template.jinja and no "
                         "chat_template in tokenizer_config.json)")
    max_len = args.max_len or cfg.max_seq_len
    token_lists = prompts.encode(items, tokenizer, chat=args.chat, vocab_size=cfg.vocab_size)
    truncated = sum(len(t) > max_len for t in token_lists)
    token_lists = [t[:max_len] for t in token_lists]
    settings = {"max_len": max_len, "truncated_prompts": truncated, "chat": args.chat, "dtype": cfg.dtype,
                "prompt_source": args.text_file or args.prompts or "built-in prompts",
                "command": shlex.join(["python", "-m", "probes", *getattr(args, "argv", [])])}
    pad_id = getattr(tokenizer, "pad_token_id", None)
    record = massive_report(params, cfg, token_lists, args.out, sites=args.sites and args.sites.split(","),
                            lam=args.lam, k=args.top_k, layers=layers, batch_size=args.batch_size,
                            pad_id=0 if pad_id is None else pad_id, init_baseline=args.init_baseline,
                            seed=args.seed, source=args.model, settings=settings, eps=args.eps)
    f = record["frequency"]
    hypothetical = " (hypothetical map: this model does not rotate)" if f["hypothetical"] else ""
    for site in record["settings"]["sites"]:
        rounded = lambda xs: [None if x is None else round(x, 2) for x in xs]
        line = f"{site:6s} massive per layer {record[site]['massive_count']}  low-freq share " \
               f"{rounded(record[site]['lowfreq_share'])} (chance {f['chance_lowfreq']:.2f}){hypothetical}"
        if f["unrotated_dims"]:
            line += f"  unrotated share {rounded(record[site]['unrotated_share'])} (chance {f['chance_unrotated']:.2f})"
        print(line)
    s = record["sinks"]
    print(f"sinks  share of heads with first-token mass > {s['eps']:g}: {s['sink_share']:.3f}  per layer "
          f"{[round(x, 2) for x in s['sink_share_layers']]}  mean mass {[round(x, 3) for x in s['mean_mass']]}")
    print(f"wrote {Path(args.out) / 'index.html'}")

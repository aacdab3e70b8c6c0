"""The study report (or one run's, or a checkpoint series'), from saved records and results only, no
training: loss curves, emergence curves against the step-0 record, Figure-2 heatmaps at chosen steps, attention
sinks beside Q/K concentration, the disruption table and an auto-written summary. The prose and sections are
here; `python -m probes report` (probes.report_cmd) parses its argument and calls write_report."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from minimal_lm import ModelConfig
from minimal_lm.files import read_json, read_log
from probes import emergence as em
from probes import figures, statements
from probes.emergence import run_name
from probes.html import Figure, Section, Table, write_index
from probes.massive import frequency_map
from probes.records import read_records

DEFAULTS = {"lam": 5.0, "top_k": 1, "heatmap_steps": [], "heatmap_layers": []}
CANNOT = ("What it cannot show: the paper's claims are about models trained on billions to trillions of tokens. "
          "In models of a few million parameters Q/K concentration grows over tens of millions of tokens, so a "
          "study that trains for minutes shows at best the start of a trend, and a difference between schemes of "
          "this size may be seed noise: read it against the seed spread (study.seeds). After RoPE, the low-frequency "
          "share is high already at step 0 (a "
          "fast-rotating pair spreads its mass over both of its dims, a slow pair keeps it where it was): read it "
          "against the step-0 value and against Q/K before RoPE, never on its own. For a longer run, raise "
          "train.steps (e.g. `study.probe_every=50 train.steps=2000`) or use configs/study_gpu.py.")


def write_report(path) -> Path:
    """Regenerate figures and index.html for a study, run or checkpoints directory (probes.checkpoints);
    returns index.html's path."""
    path = Path(path)
    from probes import checkpoints

    if checkpoints.is_checkpoints_dir(path):
        return checkpoints.write_report(path)
    if (path / "study.json").is_file():
        out, (settings, st, seed_data) = path, study_data(path)
    elif (path / "config.json").is_file():
        parent = path.parent / "study.json"
        settings = {**read_json(path / "config.json"),
                    "study": read_json(parent)["study"] if parent.is_file() else {}}
        st = {**DEFAULTS, **settings["study"]}
        out, seed_data = path / "report", {path.name: [_load(path, st)]}
    else:
        raise FileNotFoundError(f"{path}: neither a study directory (study.json), a run directory (config.json) nor "
                                f"a checkpoints directory ({checkpoints.SETTINGS})")
    runs = list(seed_data)
    data = {n: ds[0] for n, ds in seed_data.items()}  # the first seed of each scheme
    present = {n: d for n, d in data.items() if d}
    if not present:
        raise FileNotFoundError(f"{path}: no run with probe records or metrics among {', '.join(runs)}; "
                                "train with `python -m probes study`")
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    sections = [Section("Summary", paragraphs=summary_paragraphs(data, settings, st, seed_data))]
    loss = em.loss_figure({n: d["metrics"] for n, d in present.items()}, figs / "loss.png",
                          entropy=settings.get("unigram_entropy"))
    sections.append(Section("Loss", figures=[_fig(loss, out, "Train loss (lines) and eval loss (dots) per scheme; log "
                                                            "scale. Dashed: loss of the best context-free model.")]))
    with_records = {n: d["records"] for n, d in present.items() if d["records"]}
    n_seeds = max(len(ds) for ds in seed_data.values())
    if len(with_records) > 1:
        by_seed = {n: [d["records"] for d in seed_data[n] if d and d["records"]] for n in with_records}
        f = em.comparison_figure(by_seed if n_seeds > 1 else with_records, figs / "emergence_schemes.png",
                                 lam=st["lam"], sites=("q", "k", "v", "q_pre", "k_pre"))
        sections.append(Section("Emergence across schemes", figures=[_fig(
            f, out, "Largest max ratio over layers of Q and K (after rotation for RoPE; the pre-rotation sites equal "
            "them without rotation) and V, per scheme; hollow circles: step 0 (random init); dashed: λ."
            + (" Thin lines: each seed; thick: their mean over a min-max band." if n_seeds > 1 else ""))]))
    table = statements.sites_table(seed_data, st["lam"])
    if table:
        sections.append(Section("Per scheme and site", tables=[table]))
    sections.append(classes_section(seed_data, out, figs))
    sections.append(sinks_section(with_records, st, out, figs))
    for name, d in present.items():
        sections.append(emergence_section(name, d, st, out, figs))
    sections += _disruption_sections(present, out, figs)
    sections.append(_cost_section(present))
    if settings.get("command"):
        sections.append(Section("Command", code=settings["command"]))
    title = "Massive values over training: " + ", ".join(em.label(n) for n in runs)
    return write_index(out, title, sections, intro=_intro(data, settings))


def study_data(path) -> tuple[dict, dict, dict]:
    """What the report reads of a study directory: (its study.json, the study settings over DEFAULTS, seed_data:
    scheme -> one _load per seed of study.seeds, None for a run not trained yet), the input of probes.statements
    (probes.sweep tabulates it)."""
    path = Path(path)
    settings = read_json(path / "study.json")
    seeds = settings["study"].get("seeds") or [0]
    st = {**DEFAULTS, **settings["study"]}
    return settings, st, {s: [_load(path / run_name(s, k, seeds), st) for k in seeds]
                          for s in settings["study"]["schemes"]}


def classes_section(seed_data: dict, out, figs) -> Section:
    """Contextual / parametric held-out tokens per disruption mode: the table at the last step, and a figure over
    training (probes.statements, probes.emergence.class_figure)."""
    title = "Contextual and parametric tokens under disruption"
    logs = {n: [d["classes"] for d in ds if d and d.get("classes")] for n, ds in seed_data.items()}
    logs = {n: lg for n, lg in logs.items() if lg}
    if not logs:
        return Section(title, paragraphs=[statements.classes_paragraph(seed_data)])
    f = em.class_figure(logs, figs / "token_classes.png")
    return Section(title, paragraphs=[statements.classes_paragraph(seed_data)],
                   tables=[statements.classes_table(seed_data)],
                   figures=[_fig(f, out, "Held-out loss and top-1 accuracy of contextual and parametric tokens against "
                                         "step per scheme: intact (solid), massive (dashed) and non-massive (dotted) "
                                         "Q/K dims disrupted; mean over seeds, band: min-max.")])


def _load(run_dir: Path, st: dict) -> dict | None:
    """Everything the report draws from one run directory; None when it holds no run yet."""
    if not (run_dir / "config.json").is_file():
        return None
    records = read_records(run_dir)
    metrics = read_log(run_dir / "metrics.jsonl")
    if not records and not metrics:
        return None
    config = read_json(run_dir / "config.json")
    model = ModelConfig.from_dict(config["model"], f"{run_dir / 'config.json'}: model")
    finals = sorted((run_dir / "disruption").glob("step_*/results.json"))
    final = read_json(finals[-1]) if finals else None
    timing = run_dir / "timing.json"
    return {"dir": run_dir, "config": config, "model": model, "records": records, "metrics": metrics,
            "freq": frequency_map(model), "summary": em.summarize(records, st["lam"]),
            "final": final, "final_dir": finals[-1].parent if finals else None,
            "final_acc": em.accuracy_by_kind(final) if final else None,
            "log": em.read_disruption_log(run_dir), "classes": em.read_class_log(run_dir),
            "timing": read_json(timing) if timing.is_file() else {}}


def _fig(path, out, caption):
    return Figure(str(Path(path).relative_to(out)), caption)


def _intro(data, settings):
    lines = _intro_lines(data, settings)
    seeds = settings.get("study", {}).get("seeds") or []
    if len(seeds) > 1:
        lines.append(f"Seeds: {', '.join(map(str, seeds))} (train.seed = data.seed = the seed; run directories "
                     f"<scheme> for seed {seeds[0]}, <scheme>_seed<k> for the others). The per-scheme sections below "
                     f"show seed {seeds[0]}; the summary, the comparison figure and the tables pool the seeds.")
    return lines


def _intro_lines(data, settings):
    some = next(d for d in data.values() if d)
    m, t = some["model"], some["config"]["train"]
    missing = [n for n, d in data.items() if not d]
    lines = [f"Model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads of {m.dim_per_head} "
             f"({m.kv_heads} KV heads); data: {some['config']['data']['kind']}; {t['steps']} steps of "
             f"{t['batch_size']} x {t['seq_len']} tokens; init seed {t['seed']}. Only model.position differs between "
             "schemes (same data order and init)."]
    if missing:
        lines.append(f"Missing: {', '.join(missing)} (no run directory with records or metrics yet; rerun the study "
                     "to train it). Everything below covers the other schemes only.")
    return lines


def _heatmap_steps(records, wanted):
    steps = [r.step for r in records]
    wanted = wanted or [steps[0], steps[-1]]
    return sorted({min(steps, key=lambda s: (abs(s - w), s)) for w in wanted})


def _heatmap_layers(n_layers, wanted):
    return list(wanted) if wanted else list(range(n_layers)) if n_layers <= 4 else [0, n_layers // 2, n_layers - 1]


def emergence_section(name, d, st, out, figs):
    """One series' emergence figure, Figure-2 heatmaps at st["heatmap_steps"] and per-layer table. `d` holds
    records, summary (emergence.summarize), freq (massive.frequency_map) and model (a ModelConfig)."""
    records, freq = d["records"], d["freq"]
    rotated, partial = freq["rotated"], bool(freq["unrot_E"].any())
    label = freq.get("label", "")
    title = em.label(name)
    if not records:
        return Section(title, paragraphs=["No probe records (probes/ is empty): nothing to draw but the loss."])
    chances = figures.chance_text(freq)
    figures_ = [_fig(em.emergence_figure(records, figs / f"{name}_emergence.png", lam=st["lam"],
                                         chance=freq["chance_lowfreq"], rotated=rotated, title=title,
                                         log_steps=st.get("log_steps", False),
                                         unrotated_chance=freq["chance_unrotated"] if partial else None,
                                         hypothetical=label), out,
                     f"{title}: max ratio and low-frequency share of top-{st['top_k']} mass"
                     + (" and its share in unrotated dims" if partial else "") + " per layer against step; "
                     f"dotted lines: each layer's step-0 value; dashed: λ (top) and chance ({chances})."
                     + (f" The low-frequency share is {label}." if label else ""))]
    by_step = {r.step: r for r in records}
    layers = _heatmap_layers(d["model"].num_layers, st["heatmap_layers"])
    marks = ("; red marks: lowest-frequency quarter" + ("; dashed line: the unrotated dims start above it"
                                                        if partial else "")) if rotated else ""
    for step in _heatmap_steps(records, st["heatmap_steps"]):
        f = em.heatmap_figure(by_step[step], figs / f"{name}_heatmap_step{step}.png", layers=layers, rotated=rotated,
                              low_E=freq["low_E"], unrot_E=freq["unrot_E"], title=f"{title}, step {step}")
        seen = f" ({by_step[step].tokens_seen:,} tokens)" if by_step[step].tokens_seen > 0 else ""
        figures_.append(_fig(f, out, f"{title}, step {step}{seen}: M[head, dim] "
                                     "per layer and site (the paper's Figure 2)" + marks))
    rows = []
    for site, layers_s in d["summary"]["sites"].items():
        if not rotated and site in ("q_pre", "k_pre"):
            continue
        for i, x in enumerate(layers_s):
            unrot = [x.get("unrotated_init"), x.get("unrotated_final")] if partial else []
            rows.append([site, i, x["init"], x["final"], f"{x['peak']:.3g} @ {x['peak_step']}", x["first_massive_step"],
                         x["largest_rise_step"], f"{x['massive_count_init']} → {x['massive_count_final']}",
                         x["lowfreq_init"], x["lowfreq_final"], *unrot, x["concentration_init"],
                         f"{x['concentration_final']:.2f} ({_index_name(x['top_freq_final'], freq)})"])
    table = Table(["site", "layer", "max ratio @0", "final", "peak @ step", f"first > λ={st['lam']:g}",
                   "largest rise @", "massive dims", "low-freq @0", "final",
                   *(["unrotated @0", "final"] if partial else []), "same-freq heads @0", "final"], rows,
                  caption=f"{title}: per site and layer (chance shares: {chances})"
                  + (f"; the low-frequency share is {label}" if label else ""))
    return Section(f"{title}: emergence and Figure 2", figures=figures_, tables=[table, sinks_table(title, d)])


def sinks_table(title: str, d: dict) -> Table:
    """Per layer: mean first-token attention mass and sink heads at the first and last records that hold them
    (probes.emergence.summarize_sinks); one row saying "not recorded" for records that predate them."""
    s = d["summary"].get("sinks")
    if not s:
        return Table(["layer", "first-token mass", "sink heads"], [["all", "not recorded", "not recorded"]],
                     caption=f"{title}: attention sinks (not recorded: these records predate them)")
    a, b = s["first_step"], s["last_step"]
    rows = [[i, x["mass_first"], x["mass_last"], f"{x['sinks_first']} → {x['sinks_last']} of {s['heads']}"]
            for i, x in enumerate(s["layers"])]
    rows.append(["all", None, None, f"share {s['share_first']:.2f} → {s['share_last']:.2f}"])
    return Table(["layer", f"first-token mass @{a}", f"@{b}", f"sink heads (mass > {s['eps']:g}) {a} → {b}"], rows,
                 caption=f"{title}: attention sinks, mean over heads of the attention on the first token (Gu et al.)"
                 + (f"; {s['missing']} older record(s) without sinks" if s["missing"] else ""))


def sinks_section(records_by_scheme: dict, st: dict, out, figs) -> Section:
    """Sink share over training beside the Q/K max ratio, per scheme (probes.emergence.sinks_figure)."""
    title = "Attention sinks beside Q/K concentration"
    if not any(r.sinks for rs in records_by_scheme.values() for r in rs):
        return Section(title, paragraphs=["Attention sinks: not recorded (these probe records predate them; a new "
                                          "study records them at every probe step)."])
    f = em.sinks_figure(records_by_scheme, figs / "sinks_schemes.png", lam=st["lam"])
    return Section(title, figures=[_fig(f, out, "Per scheme against step: the largest max ratio over layers of Q and K "
                                                "(dashed: λ), and the share of heads whose mean attention on the first "
                                                "token exceeds eps (Gu et al. 2025); hollow circles: step 0.")])


def sink_paragraph(present: dict) -> str:
    """The summary's sentence on attention sinks, per series: the sink share at the first and last records that hold
    it, against Gu et al.'s ~60M models; "not recorded" for series whose records predate it."""
    parts, eps = [], None
    for n, d in present.items():
        s = d["summary"].get("sinks") if d["summary"] else None
        if not s:
            parts.append(f"{em.label(n)} not recorded")
            continue
        eps = s["eps"]
        parts.append(f"{em.label(n)} {s['share_first']:.2f} at step {s['first_step']} → {s['share_last']:.2f} at step "
                     f"{s['last_step']}" + (f" (peak {s['share_peak']:.2f} at {s['peak_step']})"
                                            if s["share_peak"] > max(s["share_first"], s["share_last"]) else ""))
    where = f"first-token attention mass > {eps:g}" if eps is not None else "first-token attention mass above eps"
    return (f"Attention sinks (share of heads with {where}, mean over query tokens; Gu et al. find 18-33% after 5B "
            "tokens in ~60M models, emerging after 1-2k steps): " + "; ".join(parts) + ".")


def _index_name(index, freq) -> str:
    """A top_freq_index as the report names it: a frequency index, or an unrotated dim (index head_dim + j)."""
    if index is None:
        return "index ?"
    head_dim = len(freq["freq_E"])
    return f"unrotated dim {index - head_dim}" if index >= head_dim else f"index {index}"


def _disruption_sections(present, out, figs):
    rows, notes = [], []
    for name, d in present.items():
        if not d["final_acc"]:
            continue
        step = int(d["final_dir"].name.split("_")[1])
        notes.append(f"{em.label(name)}: {d['final_dir'].relative_to(out.parent if out.name == 'report' else out)}"
                     f"/index.html (step {step}; per-item outputs in examples.jsonl)")
        modes = list(d["final_acc"])
        for kind in d["final_acc"][modes[0]]:
            rows.append([em.label(name), step, kind, d["final_acc"][modes[0]][kind]["n"],
                         *(_pct(d["final_acc"].get(m, {}).get(kind)) for m in ("none", "massive", "non_massive"))])
    if not rows:
        return [Section("Disruption", paragraphs=["No disruption results yet."])]
    table = Table(["scheme", "step", "kind", "n", "none", "massive", "non_massive"], rows,
                  caption="Accuracy (%) of the final models: intact, massive dims disrupted, as many non-massive dims "
                          "disrupted (top-k per head of Q and K, replaced by their mean over the prompt)")
    figures = []
    logs = {n: d["log"] for n, d in present.items() if len(d["log"]) > 1}
    if logs:
        figures.append(_fig(em.disruption_figure(logs, figs / "disruption_over_training.png"), out,
                            "Accuracy per mode during training (solid: none, dashed: massive, dotted: non-massive)."))
    return [Section("Disruption", paragraphs=notes, tables=[table], figures=figures)]


def _pct(x):
    return None if x is None else round(100 * x["accuracy"], 1)


def _cost_section(present):
    rows = []
    for name, d in present.items():
        probe_s = [m["probe_s"] for m in d["metrics"] if "probe_s" in m]
        disrupt_s = sum(m.get("disrupt_s", 0.0) for m in d["metrics"])
        rows.append([em.label(name), d["metrics"][-1]["step"] if d["metrics"] else None, d["timing"].get("train_s"),
                     len(probe_s), float(np.sum(probe_s)) if probe_s else None, disrupt_s or None,
                     d["timing"].get("final_s")])
    return Section("Cost", tables=[Table(
        ["scheme", "steps", "train wall s (with probes)", "probes", "probe s", "disruption during training s",
         "final disruption s"], rows, caption="Wall time per phase (summed over resumed invocations)")])


# ---- the auto-written summary ------------------------------------------------------------------------


def summary_paragraphs(data: dict, settings: dict, st: dict, seed_data: dict | None = None) -> list[str]:
    present = {n: d for n, d in data.items() if d}
    seed_data = seed_data or {n: [d] for n, d in data.items()}
    out = []
    losses = {n: next((m["eval_loss"] for m in reversed(d["metrics"]) if "eval_loss" in m), None)
              for n, d in present.items()}
    entropy = settings.get("unigram_entropy")
    some = next(iter(present.values()))
    step, t = (some["metrics"][-1]["step"] if some["metrics"] else 0), some["config"]["train"]
    of = f" of {t['steps']}" if step < t["steps"] else ""
    known = ", ".join(f"{em.label(n)} {v:.3f}" for n, v in losses.items() if v is not None)
    out.append(f"Trained {len(present)} scheme(s) for {step}{of} steps ({step * t['batch_size'] * t['seq_len']:,} "
               f"tokens each). " + (f"Last eval loss: {known}" if known else "No evaluation yet")
               + (f" (unigram entropy {entropy:.3f}: below it, a model uses context)." if entropy else "."))
    if max(len(ds) for ds in seed_data.values()) > 1:
        out += seeds_paragraphs(present, seed_data, st)
    else:
        out += emergence_paragraphs(present, st)
        out += statements.site_paragraphs(seed_data, st["lam"])
    out.append(statements.classes_paragraph(seed_data))
    out.append(_disruption_summary(present))
    out.append("What this run can show: whether, over these steps, Q and K concentrate their norm in a few dims "
               "more than V does, whether that differs between positional schemes, and when it starts, always "
               "against the random-init record at step 0; and how the final models' accuracy changes when those "
               "dims are disrupted. " + CANNOT)
    return out


def emergence_paragraphs(present: dict, st: dict) -> list[str]:
    """The summary's sentences on massive values, per series (name -> the dict emergence_section takes):
    max ratio of Q, K and V at step 0 and at the end, which series grew a massive dim, Q/K against V, the
    low-frequency share before and after rotation against step 0 (labelled hypothetical for a model without
    rotation), for partial rotary the share in unrotated dims, each with its chance share, and the attention-sink
    share (or "not recorded")."""
    lam, out = st["lam"], []
    massive = list(_massive_parts(present).values())
    out.append(f"Massive values (a dim with M > {lam:g} x its head mean): " + " ".join(massive))
    out += [t for t in (_verdicts(present, lam), _qk_versus_v(present)) if t]
    out.append(sink_paragraph(present))
    for n, d in present.items():
        s, freq = d["summary"], d["freq"]
        if not (s and s["has_step0"] and len(s["steps"]) > 1):
            continue
        mean = lambda site, key: _mean([y.get(key) for y in s["sites"][site]])
        if not freq["rotated"]:
            out.append(f"{em.label(n)} low-frequency share of top-{st['top_k']} mass (mean over layers; chance "
                       f"{freq['chance_lowfreq']:.2f}), step 0 → end: Q {mean('q', 'lowfreq_init')} → "
                       f"{mean('q', 'lowfreq_final')}, K {mean('k', 'lowfreq_init')} → {mean('k', 'lowfreq_final')}; "
                       f"{freq['label']}: it says whether the dims a RoPE model would rotate slowest carry the mass, "
                       "in a model that rotates none.")
            continue
        x = {site: s["sites"][site] for site in ("q", "k", "q_pre", "k_pre")}
        partial = bool(freq["unrot_E"].any())
        of = (f" of the {freq['rotary_dim']} rotated of {len(freq['freq_E'])} dims per head" if partial else "")
        out.append(f"{em.label(n)} low-frequency share of top-{st['top_k']} mass (the slowest quarter{of}; mean over "
                   f"layers; chance {freq['chance_lowfreq']:.2f}), step 0 → end: after rotation Q "
                   f"{mean('q', 'lowfreq_init')} → {mean('q', 'lowfreq_final')}, K {mean('k', 'lowfreq_init')} → "
                   f"{mean('k', 'lowfreq_final')}; before rotation Q {mean('q_pre', 'lowfreq_init')} → "
                   f"{mean('q_pre', 'lowfreq_final')}, K {mean('k_pre', 'lowfreq_init')} → "
                   f"{mean('k_pre', 'lowfreq_final')}. The after-rotation value at step 0 is the bias of "
                   "the rotation itself, not something learned."
                   + _agreement(x, int(freq["freq_E"].max()), len(freq["freq_E"])))
        if partial:
            out.append(f"{em.label(n)} share of top-{st['top_k']} mass in the {int(freq['unrot_E'].sum())} unrotated "
                       f"dims (their own class, frequency zero: never counted as low or high frequency; chance "
                       f"{freq['chance_unrotated']:.2f}), step 0 → end: after rotation Q {mean('q', 'unrotated_init')}"
                       f" → {mean('q', 'unrotated_final')}, K {mean('k', 'unrotated_init')} → "
                       f"{mean('k', 'unrotated_final')}; before rotation Q {mean('q_pre', 'unrotated_init')} → "
                       f"{mean('q_pre', 'unrotated_final')}, K {mean('k_pre', 'unrotated_init')} → "
                       f"{mean('k_pre', 'unrotated_final')}. Rotation cannot spread an unrotated dim's mass either, "
                       "so after rotation these dims share the slow pairs' bias.")
    return out


def _massive_parts(present: dict) -> dict[str, str]:
    """Per series, the sentence of the summary's "Massive values" paragraph: the largest max ratio over layers of
    Q, K and V at step 0 and at the end, or why there is none."""
    massive = {}
    for n, d in present.items():
        s = d["summary"]
        if not s or not s["has_step0"] or len(s["steps"]) < 2:
            massive[n] = f"{em.label(n)}: " + ("only the step-0 record so far." if s and s["has_step0"] else
                                               "no step-0 record, so no baseline to compare with.")
            continue
        parts = []
        for site in ("q", "k", "v"):
            x = s["sites"][site]
            init, final = max(y["init"] for y in x), max(y["final"] for y in x)
            born = [i for i, y in enumerate(x) if y["first_massive_step"] is not None and not y["massive_at_init"]]
            parts.append(f"{site.upper()} {init:.2f} → {final:.2f} (x{final / init:.2f})"
                         + (f", crossing λ in layer(s) {born}" if born else ""))
        massive[n] = (f"{em.label(n)}: largest max ratio over layers, step 0 → {s['steps'][-1]}: "
                      + "; ".join(parts) + ".")
    return massive


def seeds_paragraphs(present: dict, seed_data: dict, st: dict) -> list[str]:
    """The summary's sentences on massive values when the study has several seeds: each quantity once, over all
    seeds (probes.statements.site_paragraphs, with the layers that crossed lambda), in place of emergence_paragraphs'
    seed-0 sentences; beside them what only those said: what a massive value is, why a series has no statement
    yet, Q/K against V, the sink threshold against Gu et al. (and any peak between the ends), what the low-frequency
    share is measured against (its chance share, the rotation's own bias or, without rotation, that it is
    hypothetical), the heads agreeing on a frequency index and, for partial rotary, the share in unrotated dims."""
    lam, k = st["lam"], st["top_k"]
    stats = {n: [x for x in map(statements.run_stats, ds) if x] for n, ds in seed_data.items()}
    missing = [text for n, text in _massive_parts(present).items() if not stats.get(n)]
    out = [f"Massive values (a dim with M > {lam:g} x its head mean), per scheme over its seeds: the largest max ratio "
           "over layers per site at step 0 and at the end (mean [min, max] over seeds), the first step a dim crossed "
           "λ with the layers it crossed in (per seed), the low-frequency share and the attention-sink share."
           + "".join(f" {text}" for text in missing)]
    out += statements.site_paragraphs(seed_data, lam, layers=True)
    out += [t for t in (_qk_versus_v_seeds(stats), _sinks_seeds(seed_data, stats)) if t]
    for n, ds in seed_data.items():
        runs = [d for d in ds if d and statements.run_stats(d)]
        if not runs:
            continue
        freq = runs[0]["freq"]
        if not freq["rotated"]:
            out.append(f"{em.label(n)}: the low-frequency share above is that of the top-{k} mass (mean over layers; "
                       f"chance {freq['chance_lowfreq']:.2f}); {freq['label']}: it says whether the dims a RoPE model "
                       "would rotate slowest carry the mass, in a model that rotates none.")
            continue
        partial = bool(freq["unrot_E"].any())
        of = (f" of the {freq['rotary_dim']} rotated of {len(freq['freq_E'])} dims per head" if partial else "")
        heads = "; ".join(_agreement_part({site: d["summary"]["sites"][site] for site in ("q", "k")},
                                          len(freq["freq_E"])) for d in runs)
        out.append(f"{em.label(n)}: the low-frequency share above is that of the top-{k} mass in the slowest quarter"
                   f"{of} (mean over layers; chance {freq['chance_lowfreq']:.2f}), after rotation for q and k, before "
                   "it for q_pre and k_pre. The after-rotation value at step 0 is the bias of the rotation itself, not "
                   "something learned. Heads agreeing on the frequency index of their top dim, largest at the end, per "
                   f"seed: {heads}. Index 0 is the fastest-rotating pair, {int(freq['freq_E'].max())} the slowest.")
        if partial:
            share = lambda site, key: statements.spread(  # noqa: E731
                [np.mean(v) if (v := [y[key] for y in d["summary"]["sites"][site] if y.get(key) is not None])
                 else None for d in runs]) or "n/a"
            out.append(f"{em.label(n)} share of top-{k} mass in the {int(freq['unrot_E'].sum())} unrotated dims (their "
                       f"own class, frequency zero: never counted as low or high frequency; chance "
                       f"{freq['chance_unrotated']:.2f}; mean over layers, then mean [min, max] over {len(runs)} "
                       "seeds), "
                       f"step 0 → end: after rotation Q {share('q', 'unrotated_init')} → "
                       f"{share('q', 'unrotated_final')}, K {share('k', 'unrotated_init')} → "
                       f"{share('k', 'unrotated_final')}; before rotation Q {share('q_pre', 'unrotated_init')} → "
                       f"{share('q_pre', 'unrotated_final')}, K {share('k_pre', 'unrotated_init')} → "
                       f"{share('k_pre', 'unrotated_final')}. Rotation cannot spread an unrotated dim's mass either, "
                       "so after rotation these dims share the slow pairs' bias.")
    return out


def _qk_versus_v_seeds(stats: dict) -> str:
    """_qk_versus_v over seeds: per scheme, in how many seeds the largest max ratio of Q or K grew more than V's."""
    parts = []
    for n, runs in stats.items():
        if not runs:
            continue
        growth = lambda r, site: r["sites"][site]["final"] / r["sites"][site]["init"]  # noqa: E731
        more = sum(max(growth(r, "q"), growth(r, "k")) > growth(r, "v") for r in runs)
        parts.append(f"{em.label(n)} {more} of {len(runs)} seed{'s' * (len(runs) > 1)}")
    if not parts:
        return ""
    return ("The largest max ratio of Q or K grew (end over step 0) more than that of V in: " + ", ".join(parts) + ".")


def _sinks_seeds(seed_data: dict, stats: dict) -> str:
    """sink_paragraph over seeds, less the shares at step 0 and at the end that site_paragraphs gives: the threshold,
    Gu et al.'s shares, any peak above both ends (per seed), the first record when it is not step 0, and the series
    whose records predate sinks."""
    eps, peaks, late, unrecorded = None, [], [], []
    for n, ds in seed_data.items():
        if not stats.get(n):
            continue
        sinks = [d["summary"].get("sinks") for d in ds if d and statements.run_stats(d)]
        if not any(sinks):
            unrecorded.append(em.label(n))
            continue
        eps = next(s["eps"] for s in sinks if s)
        if any(s and s["share_peak"] > max(s["share_first"], s["share_last"]) for s in sinks):
            peaks.append(f"{em.label(n)} " + "; ".join(
                f"{s['share_peak']:.2f} at step {s['peak_step']}"
                if s and s["share_peak"] > max(s["share_first"], s["share_last"]) else "none" for s in sinks))
        if any(s and not s["step0"] for s in sinks):
            late.append(f"{em.label(n)} " + "; ".join(
                f"{s['share_first']:.2f} at step {s['first_step']}" if s and not s["step0"] else "-" for s in sinks))
    if eps is None and not unrecorded:
        return ""
    where = f"first-token attention mass > {eps:g}" if eps is not None else "first-token attention mass above eps"
    return (f"Attention sinks: the attention-sink share above is the share of heads with {where}, mean over query "
            "tokens (Gu et al. find 18-33% after 5B tokens in ~60M models, emerging after 1-2k steps)."
            + (f" Peak above both ends, per seed: {', '.join(peaks)}." if peaks else "")
            + (f" First recorded after step 0, per seed: {', '.join(late)}." if late else "")
            + (f" Not recorded: {', '.join(unrecorded)}." if unrecorded else ""))


def _mean(values) -> str:
    """Mean of the known values, as the summary writes it ("n/a" when none: e.g. records that predate a metric)."""
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.2f}" if known else "n/a"


def _agreement(x, slowest, head_dim):
    """The Q/K layer whose heads most agree on their top dim's frequency index at the end."""
    return (f" Heads agreeing on the frequency index of their top dim, largest at the end: "
            f"{_agreement_part(x, head_dim, f'; index 0 is the fastest-rotating pair, {slowest} the slowest')}.")


def _agreement_part(x, head_dim, note: str = "") -> str:
    """_agreement's layer: 'K layer 1, 0.25 at step 0 → 0.75 (index 8)', `note` inside the parentheses."""
    site, i = max(((site, i) for site in ("q", "k") for i in range(len(x[site]))),
                  key=lambda si: x[si[0]][si[1]]["concentration_final"] or 0)
    layer = x[site][i]
    index = layer["top_freq_final"]
    where = (f"unrotated dim {index - head_dim}" if index is not None and index >= head_dim else f"index {index}")
    num = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"{site.upper()} layer {i}, {num(layer['concentration_init'])} at step 0 → "
            f"{num(layer['concentration_final'])} ({where}{note})")


def _verdicts(present, lam):
    """One sentence: which schemes' Q/K grew a massive dim that was absent at step 0."""
    grew, none = [], []
    for n, d in present.items():
        s = d["summary"]
        if not s or not s["has_step0"] or len(s["steps"]) < 2:
            continue
        born = [site for site in ("q", "k") if any(y["first_massive_step"] is not None and not y["massive_at_init"]
                                                   for y in s["sites"][site])]
        if born:
            grew.append(f"{em.label(n)} ({', '.join(site.upper() for site in born)})")
        else:
            none.append(em.label(n))
    if not grew and not none:
        return ""
    text = []
    if grew:
        text.append("A massive dim absent at step 0 appeared in: " + ", ".join(grew) + ".")
    if none:
        text.append(f"No Q/K dim crossed λ = {lam:g} (beyond step 0) in: " + ", ".join(none) + ".")
    return " ".join(text)


def _qk_versus_v(present):
    """The paper's first claim in numbers: did Q or K concentrate more than V over training?"""
    growth = {}
    for n, d in present.items():
        s = d["summary"]
        if s and s["has_step0"] and len(s["steps"]) > 1:
            growth[n] = {site: max(y["final"] for y in s["sites"][site]) / max(y["init"] for y in s["sites"][site])
                         for site in ("q", "k", "v")}
    if not growth:
        return ""
    more = [em.label(n) for n, g in growth.items() if max(g["q"], g["k"]) > g["v"]]
    less = [em.label(n) for n, g in growth.items() if max(g["q"], g["k"]) <= g["v"]]
    if not more:
        return "In no scheme did the largest max ratio of Q or K grow more than that of V."
    return (f"The largest max ratio of Q or K grew more than that of V in {', '.join(more)}"
            + (f"; not in {', '.join(less)}." if less else "."))


def _disruption_summary(present):
    accs = {n: d["final_acc"] for n, d in present.items() if d["final_acc"]}
    if not accs:
        return "Disruption: no results (study.disrupt_tasks=none, or not run yet)."
    parts, best = [], 0.0
    for n, acc in accs.items():
        kinds = next(iter(acc.values()))
        parts.append(f"{em.label(n)} " + "; ".join(
            f"{k} " + "/".join(f"{100 * acc[m][k]['accuracy']:.0f}" for m in acc if k in acc[m]) for k in kinds))
        best = max([best] + [acc["none"][k]["accuracy"] for k in acc.get("none", {})])
    modes = "/".join(next(iter(accs.values())))
    text = f"Disruption accuracy (%), {modes}: " + ", ".join(parts) + "."
    if best < 0.2 and any("none" in acc for acc in accs.values()):
        return text + (f" The intact models answer at most {100 * best:.0f}% of the items, so this table cannot "
                       "show whether they depend on their massive dims: they have not learned the tasks yet.")
    drops = []
    for n, acc in accs.items():
        if {"none", "massive", "non_massive"} <= set(acc):
            drops.append(f"{em.label(n)} " + "; ".join(
                f"{k} {_points(acc, 'massive', k)} massive vs {_points(acc, 'non_massive', k)} non-massive"
                for k in acc["none"]))
    if drops:
        text += " Change from the intact model, in points: " + ", ".join(drops) + "."
    return text


def _points(acc, mode, kind):
    return f"{100 * (acc[mode][kind]['accuracy'] - acc['none'][kind]['accuracy']):+.0f}"

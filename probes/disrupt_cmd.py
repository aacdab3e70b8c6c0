"""`python -m probes disrupt`: the paper's Table 1 on any model the framework loads. Each mode (none,
massive, non_massive) generates on the same items; writes results.json, examples.jsonl, accuracy.png and
index.html. With --config, a JSON file lists several tasks and settings to build the whole table in one run."""
from __future__ import annotations

import argparse
import codecs
import json
import shlex
from pathlib import Path

import matplotlib.figure
import numpy as np

from minimal_lm.cli import STRICT_HELP
from minimal_lm.hooks import SCOPES
from probes import tasks
from probes.experiment import RUN_DEFAULTS, check_run, evaluate, load_config
from probes.html import Figure, Section, Table, write_index
from probes.scoring import SCORERS


def run_all(params, cfg, tokenizer, runs: list[dict], out_dir, *, source: str = "", command: str = "",
            progress: bool = True) -> dict:
    """Evaluate every run and write the report; returns the results.json record (one run: the issue's
    {"task", "n", "results", "settings"}; several: {"runs": [...], "settings": {...}})."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, rows = [], []
    for run in runs:
        record, examples = evaluate(params, cfg, tokenizer, run, progress=progress)
        records.append(record)
        rows += examples
    common = {"model": source, "command": command, "dtype": cfg.dtype}
    if len(records) == 1:
        result = {**records[0], "settings": {**records[0]["settings"], **common}}
    else:
        result = {"runs": records, "settings": common}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    with open(out / "examples.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    _report(out, records, rows, common)
    return result


def _table_rows(records):
    """(label, kind, n, {mode: result}) per run, plus one line per kind when a run mixes kinds."""
    for rec in records:
        kinds = sorted({k for res in rec["results"].values() for k in res.get("by_kind", {})})
        yield rec["label"], "/".join(rec["kinds"]), rec["n"], rec["results"]
        for kind in kinds:
            per = {m: res["by_kind"][kind] for m, res in rec["results"].items()}
            yield f"{rec['label']} [{kind}]", kind, next(iter(per.values()))["n"], per


def _report(out, records, rows, common):
    modes = list(dict.fromkeys(m for rec in records for m in rec["results"]))
    lines = list(_table_rows(records))
    acc = Table(["task", "kind", "n", *modes],
                [[label, kind, n, *(f"{100 * res[m]['accuracy']:.1f}" if m in res else None for m in modes)]
                 for label, kind, n, res in lines], caption="Accuracy (%) per mode, as in the paper's Table 1")
    extra = Table(["task", *(f"{m} {q}" for m in modes for q in ("ppl", "distinct-2"))],
                  [[rec["label"], *(rec["results"].get(m, {}).get(q) for m in modes
                                    for q in ("perplexity", "diversity"))] for rec in records],
                  caption="The paper's Figure 3: perplexity of the answer alone under each mode's model, and "
                          "word distinct-2 per answer, averaged (ours, perplexity_given_prompt and "
                          "distinct2_pooled_tokens, are in results.json)")
    described = list(dict.fromkeys(f"{m}: {d}" for rec in records for m, d in rec["settings"]["described"].items()))
    conflict = [f"{rec['label']}: share of outputs that repeat the misleading context, "
                + ", ".join(f"{m} {100 * res['context_rate']:.0f}%" for m, res in rec["results"].items())
                for rec in records if any("context_rate" in res for res in rec["results"].values())]
    fig = _accuracy_figure(lines, modes, out / "accuracy.png")
    samples = [r for r in rows if r["index"] < 2]
    sample_table = Table(["task", "mode", "answer", "output", "correct"],
                         [[r["run"], r["mode"], str(r["answer"]), r["output"][:120], r["correct"]] for r in samples],
                         caption="First two items of each task (full outputs in examples.jsonl)")
    write_index(out, "Disrupting massive values: accuracy per mode", [
        Section("Table 1", figures=[Figure(fig.name, "Accuracy per task and mode")], tables=[acc, extra],
                paragraphs=conflict),
        Section("Modes", paragraphs=described or ["none: the intact model"]),
        Section("Examples", tables=[sample_table]),
        *([Section("Command", code=common["command"])] if common.get("command") else []),
    ], intro=[f"Model: {common['model']}. Every mode sees the same items and prompts; decoding is greedy."])


def _accuracy_figure(lines, modes, path):
    fig = matplotlib.figure.Figure(figsize=(max(4.0, 1.2 * len(lines) * len(modes) / 2), 3.2))
    ax = fig.subplots()
    x = np.arange(len(lines))
    width = 0.8 / len(modes)
    for j, m in enumerate(modes):
        ax.bar(x + (j - (len(modes) - 1) / 2) * width,
               [100 * res[m]["accuracy"] if m in res else 0 for _, _, _, res in lines], width, label=m)
    ax.set_xticks(x, [label for label, *_ in lines], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def register(subparsers) -> None:
    p = subparsers.add_parser("disrupt", help="accuracy of each disruption mode on the paper's tasks (Table 1)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF checkpoint directory or run directory (or the config's \"model\")")
    p.add_argument("--out", required=True, help="output directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=list(tasks.TASKS))
    src.add_argument("--config", help="JSON: {\"runs\": [{\"task\": ...}, ...], other keys: defaults for every run}; "
                     "options given on the command line override it")
    p.add_argument("--task-file", help="data file for gsm8k, aqua, imdb, cities, jsonl (or the authors' facts JSON)")
    p.add_argument("--n", type=int, help=f"items per task (default {RUN_DEFAULTS['n']})")
    p.add_argument("--seed", type=int, help="seed of the item sample and passkey keys")
    p.add_argument("--chat", nargs="?", const="on", choices=["auto", "on", "off"], default=None,
                   help="prompt through the chat template: auto (default: when the checkpoint has one), on, off")
    p.add_argument("--system", help="system prompt for every item (default: the authors' per task; '' for none)")
    p.add_argument("--stop", action="append", help="stop string, repeatable, backslash escapes read (\\n); "
                   "default per task without chat template (e.g. '\\nQuestion:'), none with it; '' for none")
    p.add_argument("--protocol", choices=["ours", "authors", "authors_city"],
                   help="passkey, conflict: our generator (default) or the authors' (see README)")
    p.add_argument("--modes", help="comma list of none, massive, non_massive (default: these three), and "
                   "int<bits> / int<bits>_protect (q/k rounded per token, massive dims kept with _protect)")
    p.add_argument("--top-k", type=int, help="dims per head (default 1)")
    p.add_argument("--lambda", dest="lam", type=float, help="select M > lambda * head mean instead of top-k")
    p.add_argument("--replace", choices=["mean", "zero", "max", "min"])
    p.add_argument("--scope", choices=SCOPES, help="prefill (the prompt, the paper's), decode (generated "
                   "tokens) or all")
    p.add_argument("--sites", help="comma list of q, k, q_pre, k_pre, v (default q,k)")
    p.add_argument("--layers", help="comma list of layers (default all)")
    p.add_argument("--max-new-tokens", type=int, help="default per task: the authors' with a chat template (facts 300, "
                   "gsm8k 500, imdb 2000, ...; EOS ends early), short without (passkey: digits + 16)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--scorer", choices=list(SCORERS))
    p.add_argument("--max-tokens", type=int, help="passkey: prompt token budget (paper: 128, 256, 1024)")
    p.add_argument("--digits", type=int, help="passkey: key digits (paper: 6, 12, 48)")
    p.add_argument("--position", type=float, help="passkey: key position as a share of the filler (default random)")
    p.add_argument("--category", help="facts: one category, e.g. Sports")
    p.add_argument("--kind", help="jsonl: kind of items without one (contextual or parametric)")
    p.add_argument("--insert-position", type=int, help="passkey, protocol authors: first insertion token (50)")
    p.add_argument("--interval", type=int, help="passkey, protocol authors: insertion range in tokens (500)")
    p.add_argument("--question", help="passkey, protocol authors: text after the prompt (default none, as "
                   "their Llama-3 run; their Qwen run: 'What is the passkey?')")
    p.add_argument("--no-perplexity", dest="perplexity", action="store_false", default=None,
                   help="skip the answer perplexity pass")
    p.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.set_defaults(func=run)


def run(args) -> None:
    from minimal_lm import from_pretrained

    given = {"task": args.task, "task_file": args.task_file, "n": args.n, "seed": args.seed, "chat": args.chat,
             "modes": args.modes, "top_k": args.top_k, "lambda": args.lam, "replace": args.replace,
             "scope": args.scope, "sites": args.sites, "layers": args.layers, "max_new_tokens": args.max_new_tokens,
             "batch_size": args.batch_size, "scorer": args.scorer, "max_tokens": args.max_tokens,
             "digits": args.digits, "position": args.position, "category": args.category, "kind": args.kind,
             "perplexity": args.perplexity, "system": args.system, "protocol": args.protocol,
             "insert_position": args.insert_position, "interval": args.interval, "question": args.question,
             "stop": None if args.stop is None else [x for x in (codecs.decode(v, "unicode_escape")
                                                                 for v in args.stop) if x]}
    given = {k: v for k, v in given.items() if v is not None}
    model = args.model
    if args.config:
        config_model, runs = load_config(args.config)
        given.pop("task", None)
        runs = [check_run({**r, **given}, f"{args.config}: runs[{i}]") for i, r in enumerate(runs)]
        model = model or config_model
    else:
        runs = [check_run(given, "command line")]
    if not model:
        raise ValueError("no model: give --model (or \"model\" in the config)")
    cfg, params, tokenizer = from_pretrained(model, dtype=args.dtype, strict=args.strict)
    command = shlex.join(["python", "-m", "probes", *getattr(args, "argv", [])])
    result = run_all(params, cfg, tokenizer, runs, args.out, source=model, command=command)
    for rec in result.get("runs", [result]):
        accs = ", ".join(f"{m} {100 * r['accuracy']:.1f}%" for m, r in rec["results"].items())
        print(f"{rec.get('label', rec['task'])} (n={rec['n']}): {accs}")
    print(f"wrote {Path(args.out) / 'index.html'}")

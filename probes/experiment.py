"""The paper's Table 1: every mode (no disruption, massive, non-massive) on the same items of one or more
tasks, with batched generation; accuracy, answer perplexity and distinct-2 per mode; a JSON record,
per-example outputs and an HTML table with a figure.

A run is a dict of settings (see RUN_DEFAULTS); a config file (JSON) lists several runs, its other keys
being defaults for all of them: {"n": 50, "runs": [{"task": "passkey", "digits": 6}, {"task": "facts"}]}.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from minimal_lm import ModelConfig, generate
from probes import prompts, scoring, tasks
from probes.disrupt import SELECT, Disruption
from probes.quantize import QuantizeActs

RUN_DEFAULTS = {
    "task": None, "task_file": None, "label": None, "n": 100, "seed": 0, "chat": False,
    "modes": ["none", "massive", "non_massive"], "top_k": None, "lambda": None, "replace": "mean",
    "scope": "prefill", "sites": ["q", "k"], "layers": None, "max_new_tokens": None, "scorer": None,
    "batch_size": 8, "perplexity": True,
    # task options
    "max_tokens": None, "digits": None, "position": None, "category": None, "kind": None,
}
TASK_OPTIONS = {"passkey": ("max_tokens", "digits", "position"), "facts": ("category",), "jsonl": ("kind",)}


def modes_for(names, *, top_k=None, lam=None, replace="mean", scope="prefill", sites=("q", "k"),
              layers=None) -> dict:
    """Mode name -> intervention: "none" -> None, "massive"/"non_massive" -> the same Disruption but for
    its selection (top-k, default 1, or the lambda threshold); "int4", "int8_protect", ... -> per-token
    round-to-nearest of the sites at that many bits in every forward, "_protect" keeping the massive dims
    (the same top-k or threshold) in full precision (the paper's claim 6)."""
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    out = {}
    for name in names:
        if name == "none":
            out[name] = None
        elif name in SELECT:
            out[name] = Disruption(name, top_k, lam, replace, sites, layers, scope)
        elif m := re.fullmatch(r"int(\d+)(_protect)?", name):
            out[name] = QuantizeActs(int(m.group(1)), "per_token", sites=sites, protect_massive=bool(m.group(2)),
                                     k=top_k, lam=lam, layers=layers, scope="all")
        else:
            raise ValueError(f"mode {name!r}: expected none, {', '.join(SELECT)}, int<bits> or int<bits>_protect")
    if not out:
        raise ValueError("modes: expected at least one of none, massive, non_massive")
    return out


def check_run(run: dict, where: str = "run") -> dict:
    """RUN_DEFAULTS overlaid with run; unknown keys and task options of another task raise."""
    unknown = sorted(set(run) - set(RUN_DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(RUN_DEFAULTS)}")
    r = {**RUN_DEFAULTS, **{k: v for k, v in run.items() if v is not None}}
    if r["task"] not in tasks.TASKS:
        raise ValueError(f"{where}: task={r['task']!r}: expected one of {', '.join(tasks.TASKS)}")
    stray = [k for k in ("max_tokens", "digits", "position", "category", "kind")
             if r[k] is not None and k not in TASK_OPTIONS.get(r["task"], ())]
    if stray:
        raise ValueError(f"{where}: option(s) {', '.join(stray)} do not apply to task {r['task']!r}")
    for key in ("n", "batch_size"):
        if isinstance(r[key], bool) or not isinstance(r[key], int) or r[key] < 1:
            raise ValueError(f"{where}: {key}={r[key]!r}: expected a positive integer")
    return r


def evaluate(params, cfg: ModelConfig, tokenizer, run: dict, *, progress: bool = True) -> tuple[dict, list[dict]]:
    """One run: (record, per-example rows). Every mode sees the same items, prompts and batches."""
    r = check_run(run)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer (tokenizer.json); the tasks are text")
    modes = modes_for(r["modes"], top_k=r["top_k"], lam=r["lambda"], replace=r["replace"], scope=r["scope"],
                      sites=r["sites"], layers=r["layers"])
    encode = lambda texts: prompts.encode(texts, tokenizer, chat=r["chat"], vocab_size=cfg.vocab_size)
    options = {k: r[k] for k in TASK_OPTIONS.get(r["task"], ()) if r[k] is not None}
    task = tasks.build(r["task"], task_file=r["task_file"], n=r["n"], seed=r["seed"], chat=r["chat"],
                       scorer=r["scorer"], max_new_tokens=r["max_new_tokens"],
                       count_tokens=lambda s: len(encode([s])[0]), **options)
    label = r["label"] or r["task"]
    token_lists = encode([it["prompt"] for it in task.items])
    longest = max(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    if len(token_lists[longest]) + task.max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"{label}: item {longest} has {len(token_lists[longest])} prompt tokens; with "
                         f"max_new_tokens={task.max_new_tokens} that exceeds the model's max_seq_len="
                         f"{cfg.max_seq_len} (use fewer passkey max_tokens or shorter prompts)")
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    batches = [order[s:s + r["batch_size"]] for s in range(0, len(order), r["batch_size"])]
    eos = set(tokenizer.eos_token_ids)
    results, rows = {}, []
    bar = tqdm(total=len(modes) * len(batches), desc=label, unit="batch", disable=not progress)
    for mode, hook in modes.items():
        gen = [None] * len(token_lists)
        for batch in batches:
            outs = generate(params, cfg, [token_lists[i] for i in batch], task.max_new_tokens, eos_ids=sorted(eos),
                            intervention=hook, intervene_on=hook.scope if hook is not None else "all")
            for i, o in zip(batch, outs):
                gen[i] = [t for t in o if t not in eos]
            bar.update()
        texts = [tokenizer.decode(g) for g in gen]
        correct = [scoring.score(task.scorer, t, it) for t, it in zip(texts, task.items)]
        ppl = scoring.answer_perplexity(params, cfg, token_lists, gen, batch_size=r["batch_size"]) \
            if r["perplexity"] else [None] * len(gen)
        results[mode] = _summary(task.items, texts, correct, ppl, gen)
        rows += [{"run": label, "task": task.name, "index": i, "mode": mode, "kind": it["kind"],
                  "prompt": it["prompt"], "answer": it["answer"], "output": t, "correct": c, "perplexity": p}
                 for i, (it, t, c, p) in enumerate(zip(task.items, texts, correct, ppl))]
    bar.close()
    settings = {k: v for k, v in r.items() if v is not None}
    settings.update(scorer=task.scorer, max_new_tokens=task.max_new_tokens,
                    disruptions={m: h.to_dict() for m, h in modes.items() if h is not None},
                    described={m: h.describe() for m, h in modes.items() if h is not None})
    record = {"task": task.name, "label": label, "n": len(task.items),
              "kinds": sorted({it["kind"] for it in task.items}), "results": results, "settings": settings}
    return record, rows


def _summary(items, texts, correct, ppl, gen) -> dict:
    n = len(items)
    valid_ppl = [p for p in ppl if p is not None]
    out = {"accuracy": sum(correct) / n, "correct": int(sum(correct)),
           "perplexity": float(np.mean(valid_ppl)) if valid_ppl else None,
           "diversity": scoring.distinct_n(gen, 2)}
    kinds = sorted({it["kind"] for it in items})
    if len(kinds) > 1:
        out["by_kind"] = {}
        for kind in kinds:
            idx = [i for i, it in enumerate(items) if it["kind"] == kind]
            hits = sum(correct[i] for i in idx)
            out["by_kind"][kind] = {"accuracy": hits / len(idx), "correct": int(hits), "n": len(idx)}
    if any("context_answer" in it for it in items):
        follow = [scoring.contains(t, it["context_answer"]) for t, it in zip(texts, items) if "context_answer" in it]
        out["context_rate"] = sum(follow) / len(follow)
    return out


def load_config(path) -> tuple[str | None, list[dict]]:
    """(model path or None, runs) from a JSON config: keys other than "model" and "runs" are defaults.
    Runs are checked but returned as written (defaults merged), so command-line options can fill the rest."""
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("runs"), list) or not cfg["runs"]:
        raise ValueError(f"{path}: expected an object with a non-empty list \"runs\" of task settings")
    defaults = {k: v for k, v in cfg.items() if k not in ("model", "runs")}
    runs = []
    for i, run in enumerate(cfg["runs"]):
        if not isinstance(run, dict):
            raise ValueError(f"{path}: runs[{i}]: expected an object like {{\"task\": \"passkey\"}}")
        check_run({**defaults, **run}, f"{path}: runs[{i}]")
        runs.append({**defaults, **run})
    return cfg.get("model"), runs

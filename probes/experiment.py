"""The paper's Table 1: every mode (no disruption, massive, non-massive) on the same items of one or more
tasks, with batched generation; accuracy and Figure 3's perplexity and distinct-2 per mode; a JSON record,
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
from minimal_lm.batching import left_padded_batches
from probes import prompts, scoring, tasks
from probes.disrupt import SELECT, Disruption
from probes.quantize import QuantizeActs
from probes.quantize_arms import KVQuant, WeightQuant

RUN_DEFAULTS = {
    "task": None, "task_file": None, "label": None, "n": 100, "seed": 0, "chat": "auto",
    "protocol": "ours", "system": None, "stop": None,
    "modes": ["none", "massive", "non_massive"], "top_k": None, "lambda": None, "replace": "mean",
    "scope": "prefill", "sites": ["q", "k"], "layers": None, "max_new_tokens": None, "scorer": None,
    "batch_size": 8, "perplexity": True,
    # task options
    "max_tokens": None, "digits": None, "position": None, "category": None, "kind": None,
    "insert_position": None, "interval": None, "question": None,
}
TASK_OPTIONS = {"passkey": ("max_tokens", "digits", "position", "insert_position", "interval", "question"),
                "facts": ("category",), "jsonl": ("kind",)}
AUTHORS_ONLY = ("insert_position", "interval", "question")


PromptTooLong = tasks.PromptTooLong
"""Raised before any generation when a run's prompts (with the answer budget) do not fit the model's
max_seq_len, or a passkey prompt does not fit its max_tokens."""


def modes_for(names, *, top_k=None, lam=None, replace="mean", scope="prefill", sites=("q", "k"),
              layers=None) -> dict:
    """Mode name -> intervention: "none" -> None, "massive"/"non_massive" -> the same Disruption but for
    its selection (top-k, default 1, or the lambda threshold); "int4", "int8_protect", ... -> per-token
    round-to-nearest of the sites at that many bits in every forward, "_protect" keeping the massive dims
    (the same top-k or threshold) in full precision; the arms of probes.quantize_arms: "kv4_clip" (per-token
    q/k int4 with a clipped scale), "kv4_clip_protect" (massive dims kept), "kv4_clip_random" / "_lowest"
    (as many other dims kept), and weight-only "w4_rtn", "w4_awq", "w4_keep" (salient input channels scaled
    or kept, calibrated on the run's own prompts), "w4_awq_random", "w4_keep_lowest", ... (the controls)."""
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    out = {}
    for name in names:
        if name == "none":
            out[name] = None
        elif name in SELECT:
            out[name] = Disruption(name, top_k, lam, replace, sites, layers, scope)
        elif m := re.fullmatch(r"kv(\d+)_clip(?:_(protect|random|lowest))?", name):
            keep = {None: "none", "protect": "massive"}.get(m.group(2), m.group(2))
            out[name] = KVQuant(int(m.group(1)), keep=keep, k=top_k, lam=lam, sites=sites, layers=layers)
        elif m := re.fullmatch(r"w(\d+)_(?:rtn|(awq|keep)(?:_(random|lowest))?)", name):
            out[name] = WeightQuant(int(m.group(1)), "none" if m.group(2) is None else m.group(3) or "salient",
                                    {"awq": "scale", "keep": "keep"}.get(m.group(2), "scale"))
        elif m := re.fullmatch(r"int(\d+)(_protect)?", name):
            out[name] = QuantizeActs(int(m.group(1)), "per_token", sites=sites, protect_massive=bool(m.group(2)),
                                     k=top_k, lam=lam, layers=layers, scope="all")
        else:
            raise ValueError(f"mode {name!r}: expected none, {', '.join(SELECT)}, int<bits>[_protect], "
                             "kv<bits>_clip[_protect|_random|_lowest] or w<bits>_rtn|awq|keep[_random|_lowest]")
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
    stray = [k for k in dict.fromkeys(o for opts in TASK_OPTIONS.values() for o in opts)
             if r[k] is not None and k not in TASK_OPTIONS.get(r["task"], ())]
    if stray:
        raise ValueError(f"{where}: option(s) {', '.join(stray)} do not apply to task {r['task']!r}")
    other = [k for k in (AUTHORS_ONLY if r["protocol"] == "ours" else ("position",)) if r[k] is not None]
    if r["task"] == "passkey" and other:
        raise ValueError(f"{where}: option(s) {', '.join(other)} do not apply to protocol {r['protocol']!r}")
    if r["chat"] not in (*prompts.CHAT_CHOICES, True, False):
        raise ValueError(f"{where}: chat={r['chat']!r}: expected one of {', '.join(prompts.CHAT_CHOICES)}")
    if r["stop"] is not None and (isinstance(r["stop"], str) or not all(isinstance(x, str) for x in r["stop"])):
        raise ValueError(f"{where}: stop={r['stop']!r}: expected a list of strings ([] for none)")
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
    chat = prompts.resolve_chat(r["chat"], tokenizer)
    encode = lambda items: prompts.encode(items, tokenizer, chat=chat, vocab_size=cfg.vocab_size)
    options = {k: r[k] for k in TASK_OPTIONS.get(r["task"], ()) if r[k] is not None}
    system = r["system"] if r["system"] is not None else tasks.SYSTEM.get(r["task"])
    count = (lambda s: len(tokenizer.encode(s))) if r["protocol"] == "authors" else \
        (lambda s: len(encode([{"prompt": s, "system": system}])[0]))  # the budget of what the model sees
    task = tasks.build(r["task"], task_file=r["task_file"], n=r["n"], seed=r["seed"], chat=chat,
                       scorer=r["scorer"], max_new_tokens=r["max_new_tokens"], count_tokens=count,
                       protocol=r["protocol"], system=r["system"], stop=r["stop"], **options)
    label = r["label"] or r["task"]
    token_lists = encode(task.items)
    longest = max(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    max_new, room = task.max_new_tokens, cfg.max_seq_len - len(token_lists[longest])
    if max_new > room and (r["max_new_tokens"] is not None or room < 1):
        raise PromptTooLong(f"{label}: item {longest} has {len(token_lists[longest])} prompt tokens; with "
                            f"max_new_tokens={task.max_new_tokens} that exceeds the model's max_seq_len="
                            f"{cfg.max_seq_len} (use fewer passkey max_tokens or shorter prompts)")
    task = task._replace(max_new_tokens=min(max_new, room))
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    batches = [order[s:s + r["batch_size"]] for s in range(0, len(order), r["batch_size"])]
    eos = set(tokenizer.eos_token_ids)
    results, rows = {}, []

    def stopped(toks):
        text = tokenizer.decode([t for t in toks if t not in eos])
        return tasks.cut_at_stop(text, task.stop) != text

    bar = tqdm(total=len(modes) * len(batches), desc=label, unit="batch", disable=not progress)
    for mode, hook in modes.items():
        mode_params = params
        if isinstance(hook, WeightQuant):
            if hook.channels != "none":
                hook = hook.calibrate(params, cfg, left_padded_batches(token_lists, r["batch_size"],
                                                                       cap=cfg.max_seq_len))
            mode_params, hook = hook(params), None
        gen = [None] * len(token_lists)
        for batch in batches:
            outs = generate(mode_params, cfg, [token_lists[i] for i in batch], task.max_new_tokens, eos_ids=sorted(eos),
                            intervention=hook, intervene_on=hook.scope if hook is not None else "all",
                            stop=stopped if task.stop else None)
            for i, o in zip(batch, outs):
                gen[i] = [t for t in o if t not in eos]
            bar.update()
        raw = [tokenizer.decode(g) for g in gen]
        texts, gen = map(list, zip(*(stop_at(tokenizer, g, t, task.stop) for g, t in zip(gen, raw))))
        correct = [scoring.score(task.scorer, t, it) for t, it in zip(texts, task.items)]
        none = [None] * len(gen)
        alone = scoring.answer_alone_perplexity(mode_params, cfg, gen, intervention=hook,
                                                batch_size=r["batch_size"]) \
            if r["perplexity"] else none
        ppl = scoring.answer_perplexity(params, cfg, token_lists, gen, batch_size=r["batch_size"]) \
            if r["perplexity"] else none
        results[mode] = _summary(task.items, texts, correct, alone, ppl, gen)
        rows += [{"run": label, "task": task.name, "index": i, "mode": mode, "kind": it["kind"],
                  "prompt": it["prompt"], "answer": it["answer"], "output": t, "correct": c, "perplexity": a,
                  "perplexity_given_prompt": p, **({"raw_output": w} if w != t else {})}
                 for i, (it, t, c, a, p, w) in enumerate(zip(task.items, texts, correct, alone, ppl, raw))]
    bar.close()
    settings = {k: v for k, v in r.items() if v is not None}
    settings.update(scorer=task.scorer, max_new_tokens=task.max_new_tokens, chat=chat, chat_requested=r["chat"],
                    stop=list(task.stop), system_prompts=sorted({it["system"] for it in task.items
                                                                 if "system" in it}) if chat else [],
                    system_turn=prompts.takes_system(tokenizer) if chat else None,
                    first_prompt=tokenizer.decode(token_lists[0], skip_special_tokens=False),
                    disruptions={m: h.to_dict() for m, h in modes.items() if h is not None},
                    described={m: h.describe() for m, h in modes.items() if h is not None})
    record = {"task": task.name, "label": label, "n": len(task.items),
              "kinds": sorted({it["kind"] for it in task.items}), "results": results, "settings": settings}
    return record, rows


def stop_at(tokenizer, tokens: list[int], text: str, stop) -> tuple[str, list[int]]:
    """(text cut at its first stop string, the longest prefix of tokens that decodes within the cut)."""
    cut = tasks.cut_at_stop(text, stop)
    if cut == text:
        return text, tokens
    lo, hi = 0, len(tokens)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cut.startswith(tokenizer.decode(tokens[:mid])) else (lo, mid - 1)
    return cut, tokens[:lo]


def _summary(items, texts, correct, alone, ppl, gen) -> dict:
    """Accuracy; the paper's Figure 3 quantities under its names (perplexity: of the answer alone under the
    mode's model, mean over answers; diversity: word distinct-2 per answer, averaged) and ours under ours
    (perplexity_given_prompt: the intact model's, given the prompt; distinct2_pooled_tokens: token ids
    pooled over answers)."""
    n = len(items)
    mean = lambda xs: float(np.mean([x for x in xs if x is not None])) if any(x is not None for x in xs) else None
    out = {"accuracy": sum(correct) / n, "correct": int(sum(correct)),
           "perplexity": mean(alone), "diversity": scoring.distinct_n_per_answer(texts, 2),
           "perplexity_given_prompt": mean(ppl), "distinct2_pooled_tokens": scoring.distinct_n(gen, 2)}
    kinds = sorted({it["kind"] for it in items})
    if len(kinds) > 1:
        out["by_kind"] = {}
        for kind in kinds:
            idx = [i for i, it in enumerate(items) if it["kind"] == kind]
            hits = sum(correct[i] for i in idx)
            out["by_kind"][kind] = {"accuracy": hits / len(idx), "correct": int(hits), "n": len(idx)}
    if any("context_answer" in it for it in items):
        follow = [(scoring.yes_no if isinstance(it["context_answer"], bool) else scoring.contains)(
            t, it["context_answer"]) for t, it in zip(texts, items) if "context_answer" in it]
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

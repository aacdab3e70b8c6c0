"""The paper's Table 1 in one run: every column (GSM8K, AQUA, passkey (128,6), (256,12), (1024,48), IMDB |
Cities, Sports, Art, Technology, Celebrity) under every row (none = the intact model, non_massive, massive),
each cell an accuracy with its n and a 95% Wilson interval, written as table1.md, table1.json and index.html.

A cell is one column under one mode: one call of probes.experiment.evaluate. Each finished cell is saved as
cells/<column>.<mode>.json with the settings that determine it (CELL_SETTINGS); a rerun loads a finished cell
whose settings match, refuses one whose settings differ (naming the cell and the setting), and computes the
rest, so an interrupted run resumes where it stopped.

Passkey (max_tokens, digits), e.g. (128, 6): the paper's "(max prompt tokens, key digits)". In our generator
(probes.tasks.passkey, protocol "ours", the default) the prompt the model sees (chat template and system
prompt included, counted by the model's own tokenizer) holds at most max_tokens tokens, filled with as many
repetitions of the filler as fit, with a key of `digits` random digits placed at a uniformly random share
of the filler. protocol="authors" is the authors' generator, whose prompts run past the budget (README).

Data: GSM8K, AQUA, IMDB and Cities are read from local files (DATA_FILES: a --data directory with these
names, or one flag per dataset); the facts categories use the authors' per-category files when given
(200 questions each, the paper's Table 5 layout) and else the questions shipped in probes/data/facts.json
(Sports, Arts, Technology; no Celebrity). A column without data is "not run" with a note naming the flag
and the file name; a file that is named but missing or malformed is an error before any model work.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Callable, NamedTuple

from tqdm.auto import tqdm

from minimal_lm.files import refuse_file_as_dir, write_atomic
from probes import experiment, tasks
from probes.html import Section, Table, write_index

ROWS = ("none", "non_massive", "massive")
"""The table's rows: the intact model (the paper's "vanilla"), non-massive dims disrupted, massive dims disrupted."""
ROW_TITLES = {"none": "none (vanilla)", "non_massive": "non_massive", "massive": "massive"}


class Column(NamedTuple):
    key: str
    title: str
    group: str  # "contextual" or "parametric"
    task: str  # a probes.tasks task
    options: dict  # task options passed to the run (passkey max_tokens/digits, facts category)
    data: str | None = None  # the dataset a file is read for (DATA_FILES), None: synthetic or shipped
    shipped_category: str | None = None  # facts: the category of probes/data/facts.json used without a file


COLUMNS = (
    Column("gsm8k", "GSM8K", "contextual", "gsm8k", {}, "gsm8k"),
    Column("aqua", "AQUA", "contextual", "aqua", {}, "aqua"),
    *(Column(f"passkey_{t}_{d}", f"passkey ({t},{d})", "contextual", "passkey", {"max_tokens": t, "digits": d})
      for t, d in tasks.PASSKEY_SETTINGS),
    Column("imdb", "IMDB", "contextual", "imdb", {}, "imdb"),
    Column("cities", "Cities", "parametric", "cities", {}, "cities"),
    Column("sports", "Sports", "parametric", "facts", {}, "sports", "Sports"),
    Column("art", "Art", "parametric", "facts", {}, "art", "Arts"),
    Column("technology", "Technology", "parametric", "facts", {}, "technology", "Technology"),
    Column("celebrity", "Celebrity", "parametric", "facts", {}, "celebrity", None),
)
COLUMN_KEYS = tuple(c.key for c in COLUMNS)

_FACTS_FORMAT = ('JSON: {"data": [{"question": ..., "answer": true/false, "category": ...}, ...]} or a list of such '
                 'objects, one category per file')
DATA_FILES = {
    # dataset: (file names looked for in --data DIR, in order; the expected format)
    "gsm8k": (("gsm8k.jsonl",), 'JSONL, one {"question": ..., "answer": "... #### 42"} per line (the Hugging Face '
              'gsm8k "main" test split)'),
    "aqua": (("aqua.jsonl",), 'JSONL, one {"question": ..., "options": ["A)21", "B)22", ...], "correct": "A"} per '
             'line (the Hugging Face aqua_rat test split)'),
    "imdb": (("imdb.jsonl", "imdb.csv"), "JSONL or CSV (.csv, with a header) with text,label; label 1/positive or "
             "0/negative (the Hugging Face imdb test split)"),
    "cities": (("cities.csv", "cities.jsonl"), "CSV (.csv, with a header) or JSONL with statement,label,city,country,"
               "correct_country; label true/false or 1/0"),
    "sports": (("sports_qa.json",), _FACTS_FORMAT + " (the authors' datasets/sports_qa.json)"),
    "art": (("art_qa.json",), _FACTS_FORMAT + " (the authors' datasets/art_qa.json)"),
    "technology": (("technology_qa.json",), _FACTS_FORMAT + " (the authors' datasets/technology_qa.json)"),
    "celebrity": (("celebrity_qa.json",), _FACTS_FORMAT + " (the authors' datasets/celebrity_qa.json)"),
}
PAPER_FACTS_PER_CATEGORY = 200
"""The paper's Table 5: 200 Yes/No questions per fact category (the authors' datasets/*_qa.json)."""

PAPER = {
    # Table 1 numbers (accuracy, %) as given in /work/shared/PAPER.md (claim 4: "Paper Table 1, Llama3-8B:
    # passkey (128,6) 100 -> 9.0 (massive) vs 100 (non-massive); GSM8K 76.9 -> 4.0; fact QA (Sports) 95.0 ->
    # 74.5"). Those are the only ones it gives; the other cells and models are left empty, not invented.
    "Llama3-8B": {"passkey_128_6": {"none": 100.0, "non_massive": 100.0, "massive": 9.0},
                  "gsm8k": {"none": 76.9, "massive": 4.0},
                  "sports": {"none": 95.0, "massive": 74.5}},
}
PAPER_NAMES = {"Llama3-8B": re.compile(r"llama-?3-?8b")}
"""A model is the paper's when its path or config.json "_name_or_path", lower-cased with separators other
than '-' dropped and runs of '-' squeezed, matches (Meta-Llama-3-8B-Instruct, llama3_8b, ...; not Llama-3.1)."""

CELL_SETTINGS = ("column", "mode", "model", "model_config_sha256", "dtype", "task", "data_sha256", "n", "seed",
                 "chat", "scope", "top_k", "replace", "protocol", "max_new_tokens", "max_tokens", "digits",
                 "category")
"""The settings a cell's number depends on; a cached cell is reused only when all of them are equal."""

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion k/n (95% by default); None when n == 0."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paper_model(model: str) -> str | None:
    """The paper's model this checkpoint is, by its name (PAPER_NAMES), or None."""
    names = [str(model)]
    config = Path(model) / "config.json"
    if config.is_file():
        try:
            names.append(str(json.loads(config.read_text(encoding="utf-8")).get("_name_or_path") or ""))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    for name in names:
        norm = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "", name.lower().replace("_", "-")))
        for key, pattern in PAPER_NAMES.items():
            if pattern.search(norm) or pattern.search(norm.replace("-", "")):
                return key
    return None


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_data(data_dir=None, files: dict | None = None) -> dict:
    """dataset -> path of its file, or None when none is given. An explicitly named file (files[dataset])
    that is missing raises FileNotFoundError naming it and the format; in data_dir the names of DATA_FILES
    are looked for, and a missing one means "not given"."""
    files = {k: v for k, v in (files or {}).items() if v is not None}
    unknown = sorted(set(files) - set(DATA_FILES))
    if unknown:
        raise ValueError(f"unknown dataset(s) {', '.join(unknown)}; expected {', '.join(DATA_FILES)}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data {data_dir}: no such directory (expected a directory holding "
                                f"{', '.join(names[0] for names, _ in DATA_FILES.values())})")
    out = {}
    for name, (names, fmt) in DATA_FILES.items():
        if name in files:
            if not Path(files[name]).is_file():
                raise FileNotFoundError(f"--{name} {files[name]}: no such file (expected {fmt})")
            out[name] = str(files[name])
        elif data_dir is not None:
            found = [Path(data_dir) / f for f in names if (Path(data_dir) / f).is_file()]
            out[name] = str(found[0]) if found else None
        else:
            out[name] = None
    return out


def check_data(paths: dict) -> dict:
    """Read every given file once (before any model work): dataset -> number of items. A malformed file
    raises ValueError naming the file (and line) and the format expected."""
    counts = {}
    for name, path in paths.items():
        if path is None:
            continue
        task = next(c.task for c in COLUMNS if c.data == name)
        try:
            counts[name] = len(tasks.build(task, task_file=path).items)
        except ValueError as e:
            raise ValueError(f"{e} (--{name} expects {DATA_FILES[name][1]})") from None
    return counts


def plan(paths: dict, counts: dict, columns=None) -> dict:
    """column key -> {"run": True, "task_file", "options", "available", "source", "data_sha256" (of a file)}
    or {"run": False, "note"}."""
    chosen = set(COLUMN_KEYS if columns is None else columns)
    unknown = sorted(chosen - set(COLUMN_KEYS))
    if unknown:
        raise ValueError(f"columns: unknown {', '.join(unknown)}; expected some of {', '.join(COLUMN_KEYS)}")
    out = {}
    for col in COLUMNS:
        if col.key not in chosen:
            out[col.key] = {"run": False, "note": "not run: not among --columns"}
        elif col.data is not None and paths.get(col.data) is not None:
            out[col.key] = {"run": True, "task_file": paths[col.data], "options": dict(col.options),
                            "available": counts[col.data], "source": paths[col.data],
                            "data_sha256": _sha256(paths[col.data])}
        elif col.shipped_category is not None:
            n = len(tasks.facts(category=col.shipped_category))
            out[col.key] = {"run": True, "task_file": None, "options": {"category": col.shipped_category},
                            "available": n, "source": f"probes/data/facts.json, category {col.shipped_category}"}
        elif col.data is not None:
            names, fmt = DATA_FILES[col.data]
            why = "no shipped questions; " if col.task == "facts" else ""
            out[col.key] = {"run": False, "note": f"not run: {why}no --{col.data} file and no {names[0]} in --data "
                                                  f"(expected {fmt})"}
        else:
            out[col.key] = {"run": True, "task_file": None, "options": dict(col.options), "available": None,
                            "source": "generated (probes.tasks.passkey)"}
    return out


def cell_settings(col: Column, mode: str, entry: dict, common: dict) -> dict:
    """The settings that determine one cell (CELL_SETTINGS), with None for those that do not apply."""
    s = {k: None for k in CELL_SETTINGS}
    s.update({k: common.get(k) for k in ("model", "model_config_sha256", "dtype", "n", "seed", "chat", "scope",
                                          "top_k", "replace", "max_new_tokens")})
    s.update(column=col.key, mode=mode, task=col.task, **entry["options"])
    if col.task == "passkey":
        s["protocol"] = common.get("protocol", "ours")
    s["data_sha256"] = entry.get("data_sha256")
    return s


def model_identity(model: str) -> dict:
    """What a cell records of the model without loading it: its path and the sha256 of its config.json."""
    config = Path(model) / "config.json"
    return {"model": os.path.abspath(model) if Path(model).exists() else str(model),
            "model_config_sha256": _sha256(config) if config.is_file() else None}


def _cell_path(out: Path, col_key: str, mode: str) -> Path:
    return out / "cells" / f"{col_key}.{mode}.json"


def _differences(old: dict, new: dict) -> list[str]:
    return [f"{k}={old.get(k)!r} (now {new.get(k)!r})" for k in CELL_SETTINGS if old.get(k) != new.get(k)]


def run_table(model: str, out_dir, *, load: Callable[[], tuple], paths: dict, settings: dict, columns=None,
              fresh: bool = False, command: str = "", progress: bool = True) -> dict:
    """Build, resume and write the table; returns the table1.json record.

    load() -> (cfg, params, tokenizer) is called only when a cell has to be computed. settings: n, seed, chat,
    scope, top_k, replace, protocol (passkey), max_new_tokens (None: per task), batch_size, dtype."""
    out = refuse_file_as_dir(out_dir)
    counts = check_data(paths)
    entries = plan(paths, counts, columns)
    common = {**settings, **model_identity(model)}
    todo, cells, conflicts = [], {}, []
    for col in COLUMNS:
        entry = entries[col.key]
        for mode in ROWS:
            if not entry["run"]:
                continue
            s = cell_settings(col, mode, entry, common)
            path = _cell_path(out, col.key, mode)
            if path.is_file() and not fresh:
                try:
                    saved = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError:
                    saved = None  # a damaged cell (written atomically, so not by us): recompute it
                if saved is not None:
                    diff = _differences(saved.get("settings", {}), s)
                    if diff:
                        conflicts.append(f"{path}: {', '.join(diff)}")
                    else:
                        cells[col.key, mode] = saved
                        continue
            todo.append((col, mode, s))
    if conflicts:
        raise ValueError(f"{len(conflicts)} finished cell(s) were computed with other settings; rerun with the "
                         f"same settings, another --out, or --fresh to recompute them. First: {conflicts[0]}")
    if todo:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        cfg, params, tokenizer = load()
        bar = tqdm(todo, desc="table1 cells", unit="cell", disable=not progress)
        for col, mode, s in bar:
            bar.set_postfix_str(f"{col.key} {mode}")
            cell = _compute(params, cfg, tokenizer, col, mode, entries[col.key], s, settings, progress)
            write_atomic(_cell_path(out, col.key, mode), json.dumps(cell, indent=1, ensure_ascii=False))
            cells[col.key, mode] = cell
        bar.close()
    record = _record(model, entries, cells, common, command)
    _write(out, record)
    return record


def _compute(params, cfg, tokenizer, col, mode, entry, s, settings, progress) -> dict:
    cell = {"key": f"{col.key}.{mode}", "settings": s, "data_file": entry["task_file"]}
    if col.task == "passkey" and s["max_tokens"] + s["digits"] > cfg.max_seq_len:
        return {**cell, "status": "n/a", "reason": f"a {s['max_tokens']}-token prompt budget plus a {s['digits']}-"
                                                   f"digit key exceeds the model's max_seq_len={cfg.max_seq_len}"}
    run = {"task": col.task, "task_file": entry["task_file"], "label": f"{col.title} | {mode}", "modes": [mode],
           "n": s["n"], "seed": s["seed"], "chat": s["chat"], "top_k": s["top_k"], "replace": s["replace"],
           "scope": s["scope"], "max_new_tokens": s["max_new_tokens"], "batch_size": settings.get("batch_size") or 8,
           "perplexity": False, **entry["options"]}
    if col.task == "passkey":
        run["protocol"] = s["protocol"]
    try:
        record, rows = experiment.evaluate(params, cfg, tokenizer, run, progress=progress)
    except experiment.PromptTooLong as e:
        return {**cell, "status": "n/a", "reason": str(e)}
    res = record["results"][mode]
    n = record["n"]
    return {**cell, "status": "ok", "correct": res["correct"], "n": n, "accuracy": res["correct"] / n,
            "ci95": list(wilson(res["correct"], n)),
            "run_settings": {k: v for k, v in record["settings"].items() if k != "described"},
            "described": record["settings"].get("described", {}).get(mode, "the intact model"),
            "examples": rows}


def _record(model, entries, cells, common, command) -> dict:
    paper = paper_model(model)
    numbers = PAPER.get(paper, {})
    columns, table = [], {}
    for col in COLUMNS:
        entry = entries[col.key]
        columns.append({"key": col.key, "title": col.title, "group": col.group, "task": col.task,
                        **({"source": entry["source"], "available": entry["available"]} if entry["run"]
                           else {"note": entry["note"]})})
        table[col.key] = {}
        for mode in ROWS:
            paper_value = numbers.get(col.key, {}).get(mode)
            if not entry["run"]:
                c = {"status": "not run", "reason": entry["note"]}
            else:
                saved = cells[col.key, mode]
                c = {k: saved[k] for k in ("status", "reason", "correct", "n", "accuracy", "ci95") if k in saved}
            table[col.key][mode] = {**c, "paper": paper_value}
    facts = {col.title: entries[col.key].get("available") for col in COLUMNS
             if col.task == "facts" and entries[col.key]["run"]}
    settings = {k: common.get(k) for k in ("model", "model_config_sha256", "dtype", "n", "seed", "chat", "scope",
                                           "top_k", "replace", "protocol", "max_new_tokens", "batch_size")}
    return {"model": model, "paper_model": paper, "rows": list(ROWS), "columns": columns, "cells": table,
            "facts_per_category": facts, "paper_facts_per_category": PAPER_FACTS_PER_CATEGORY,
            "interval": "95% Wilson score interval of correct/n", "settings": settings, "command": command}


def _fmt_cell(c: dict) -> str:
    paper = "" if c.get("paper") is None else f" · paper {c['paper']:.1f}"
    if c["status"] != "ok":
        return c["status"] + paper
    lo, hi = c["ci95"]
    return f"{100 * c['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] n={c['n']}{paper}"


def table_rows(record: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the table as strings, a "|" column between the contextual and parametric groups."""
    cols = record["columns"]
    split = next(i for i, c in enumerate(cols) if c["group"] == "parametric")
    headers = ["mode", *(c["title"] for c in cols[:split]), "|", *(c["title"] for c in cols[split:])]
    rows = []
    for mode in record["rows"]:
        cells = [_fmt_cell(record["cells"][c["key"]][mode]) for c in cols]
        rows.append([ROW_TITLES[mode], *cells[:split], "|", *cells[split:]])
    return headers, rows


def notes(record: dict) -> list[str]:
    """One line per column that did not run or is n/a, and the facts counts, and what a cell shows."""
    s = record["settings"]
    lines = [f"Each cell: accuracy (%) [95% Wilson interval] and n, the items scored; greedy decoding, scope "
             f"{s['scope']}, top-k {s['top_k']}, replace {s['replace']}, chat {s['chat']}, at most {s['n']} items "
             f"per cell (seed {s['seed']})."]
    for col in record["columns"]:
        if "note" in col:
            lines.append(f"{col['title']}: {col['note']}.")
        for mode in record["rows"]:
            c = record["cells"][col["key"]][mode]
            if c["status"] == "n/a":
                lines.append(f"{col['title']}: n/a: {c['reason']}.")
                break
    if record["facts_per_category"]:
        lines.append("Fact questions per category: " + ", ".join(
            f"{k} {v}" for k, v in record["facts_per_category"].items())
            + f" (the paper's Table 5: {record['paper_facts_per_category']} per category, the authors' *_qa.json "
              "files; without them in --data, the questions shipped in probes/data/facts.json, which has no "
              "Celebrity).")
    if record["paper_model"]:
        lines.append(f"paper: the paper's Table 1 numbers for {record['paper_model']} where shared/PAPER.md gives "
                     "them (no interval: the paper gives none).")
    return lines


def markdown(record: dict) -> str:
    headers, rows = table_rows(record)
    esc = lambda x: x.replace("|", "\\|")
    lines = [f"# Table 1: {record['model']}", "",
             "| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    lines += ["", *(f"- {x}" for x in notes(record))]
    if record.get("command"):
        lines += ["", "```", record["command"], "```"]
    return "\n".join(lines) + "\n"


def _write(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "table1.json", json.dumps(record, indent=1, ensure_ascii=False))
    write_atomic(out / "table1.md", markdown(record))
    headers, rows = table_rows(record)
    write_index(out, "Table 1: accuracy per task under each disruption", [
        Section("Table 1", tables=[Table(headers, rows, caption="Accuracy (%) [95% Wilson interval], n; rows as "
                                         "the paper's: none (vanilla), non-massive and massive dims disrupted")],
                paragraphs=notes(record)),
        *([Section("Command", code=record["command"])] if record.get("command") else []),
    ], intro=[f"Model: {record['model']}. Per-cell outputs and settings: cells/*.json."])

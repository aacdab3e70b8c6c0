"""`python -m probes table1`: the paper's Table 1 on one checkpoint. Columns GSM8K, AQUA, passkey (128,6),
(256,12), (1024,48), IMDB | Cities, Sports, Art, Technology, Celebrity; rows none (vanilla), non_massive,
massive. Each cell: accuracy, n and a 95% Wilson interval; the paper's number beside it where the model is
one of the paper's and shared/PAPER.md gives it. Writes table1.md, table1.json, index.html and cells/*.json.

Data (read from local files; a flag wins over --data DIR, which is searched for these names):
  --gsm8k   gsm8k.jsonl         {"question", "answer": "... #### 42"} per line (HF gsm8k, main, test)
  --aqua    aqua.jsonl          {"question", "options": ["A)21", ...], "correct": "A"} per line (HF aqua_rat)
  --imdb    imdb.jsonl|.csv     text,label with label 1/positive or 0/negative (HF imdb, test)
  --cities  cities.csv|.jsonl   statement,label,city,country,correct_country
  --sports, --art, --technology, --celebrity
            sports_qa.json, ...  the authors' fact QA: {"data": [{"question", "answer": bool, "category"}]}
Passkey is generated; without a fact file, Sports, Art and Technology use the questions shipped in
probes/data/facts.json (fewer than the paper's 200 per category; the output says how many). A column whose
data is not given is not run, and the table says so in its place ("not run: no --gsm8k file ...") so that
the rest of the table can be had without every download; a file that is named but missing or malformed is
an error before the model is loaded. Cells whose prompts do not fit the model's max_seq_len are n/a, with
the reason.

Resume: every finished cell is saved in --out/cells with the settings that determine it; rerunning the same
command loads finished cells and computes the rest. A finished cell with other settings is refused (the
message names the cell and the setting); --fresh recomputes every cell.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from minimal_lm.cli import STRICT_HELP
from minimal_lm.hooks import SCOPES
from probes import table1

DEFAULTS = {"n": 200, "seed": 0, "chat": "auto", "scope": "prefill", "top_k": 1, "replace": "mean",
            "protocol": "ours", "max_new_tokens": None, "batch_size": 8, "dtype": None}
"""n: the authors' 200 passkey examples and the paper's 200 questions per fact category (Table 5)."""
CONFIG_KEYS = ("model", "data", "columns", *table1.DATA_FILES, *DEFAULTS)


def register(subparsers) -> None:
    p = subparsers.add_parser("table1", help="the paper's Table 1 (all tasks x none/non_massive/massive) with "
                              "95%% intervals, resumable", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="HF checkpoint directory or run directory (or the config's \"model\")")
    p.add_argument("--out", required=True, help="output directory (resumed when it holds cells/)")
    p.add_argument("--config", help="JSON object of defaults for the options below (keys: "
                   f"{', '.join(CONFIG_KEYS)}); the command line overrides it")
    p.add_argument("--data", help="directory holding the data files by the names above")
    for name, (names, fmt) in table1.DATA_FILES.items():
        p.add_argument(f"--{name}", metavar="FILE", help=f"{' or '.join(names)}: {fmt}")
    p.add_argument("--columns", help=f"comma list of columns to run (default all: {','.join(table1.COLUMN_KEYS)})")
    p.add_argument("--n", type=int, help=f"at most this many items per cell (default {DEFAULTS['n']})")
    p.add_argument("--seed", type=int, help="seed of the item sample and passkey keys (default 0)")
    p.add_argument("--scope", choices=SCOPES, help="disrupt the prompt only (prefill, default: the paper's) or "
                   "generated tokens too (all) or only them (decode)")
    p.add_argument("--top-k", type=int, help="dims per head disrupted (default 1)")
    p.add_argument("--replace", choices=["mean", "zero", "max", "min"], help="replacement value (default mean)")
    p.add_argument("--chat", nargs="?", const="on", choices=["auto", "on", "off"], default=None,
                   help="prompt through the chat template: auto (default: when the checkpoint has one), on, off")
    p.add_argument("--protocol", choices=["ours", "authors"], help="passkey generator (default ours; see README)")
    p.add_argument("--max-new-tokens", type=int, help="answer budget of every cell (default per task, as disrupt)")
    p.add_argument("--batch-size", type=int, help="rows per generation batch (default 8)")
    p.add_argument("--fresh", action="store_true", help="recompute every cell, replacing the saved ones")
    p.add_argument("--dtype", help="compute dtype (default: the checkpoint's)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _load_config(path) -> dict:
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object with keys among {', '.join(CONFIG_KEYS)}")
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(CONFIG_KEYS)}")
    return cfg


def run(args) -> None:
    from minimal_lm import from_pretrained

    config = _load_config(args.config) if args.config else {}
    given = {k: getattr(args, k) for k in CONFIG_KEYS if getattr(args, k, None) is not None}
    opts = {**DEFAULTS, **config, **given}
    if not opts.get("model"):
        raise ValueError("no model: give --model (or \"model\" in the config)")
    for key in ("n", "batch_size", "top_k"):
        if isinstance(opts[key], bool) or not isinstance(opts[key], int) or opts[key] < 1:
            raise ValueError(f"{key}={opts[key]!r}: expected a positive integer")
    columns = opts.get("columns")
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    paths = table1.resolve_data(opts.get("data"), {k: opts.get(k) for k in table1.DATA_FILES})
    model = opts["model"]
    settings = {k: opts[k] for k in DEFAULTS}
    command = shlex.join(["python", "-m", "probes", *getattr(args, "argv", [])])
    load = lambda: from_pretrained(model, dtype=opts["dtype"], strict=args.strict)
    record = table1.run_table(model, args.out, load=load, paths=paths, settings=settings, columns=columns,
                              fresh=args.fresh, command=command, progress=not args.quiet)
    for line in table1.notes(record)[1:]:
        print(f"note: {line}")
    print("\n".join(line for line in table1.markdown(record).splitlines() if line.startswith("|")))
    print(f"wrote {Path(args.out) / 'table1.md'}, table1.json, index.html")

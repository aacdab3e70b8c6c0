"""The paper's tasks as lists of items: passkey retrieval, Yes/No facts, capitals, a knowledge-conflict
variant, and loaders for GSM8K, AQUA, IMDB, Cities, the authors' fact QA and generic JSONL.

An item is a dict: "prompt" (text), "answer", "kind" ("contextual": the answer is in the prompt or must be
worked out from it; "parametric": it must come from the weights), plus extras a scorer or report reads
("options", "category", "context_answer"). `chat=True` phrases prompts as questions for a chat template;
otherwise they end where a base model should continue.
"""
from __future__ import annotations

import csv
import json
import random
from importlib import resources
from pathlib import Path
from typing import Callable, NamedTuple

from minimal_lm.files import read_jsonl

PASSKEY_INSTRUCTION = ("There is important info hidden inside a lot of irrelevant text. Find it and memorize it. "
                       "I will quiz you about the important information there.")
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_KEY = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_SETTINGS = ((128, 6), (256, 12), (1024, 48))
"""The paper's (max prompt tokens, key digits)."""


class Task(NamedTuple):
    name: str
    items: list[dict]
    scorer: str
    max_new_tokens: int


def passkey_prompt(key: str, n_filler: int, n_before: int, chat: bool = False) -> str:
    before, after = (" ".join([PASSKEY_FILLER] * n) for n in (n_before, n_filler - n_before))
    parts = [PASSKEY_INSTRUCTION, before, PASSKEY_KEY.format(key=key), after,
             "What is the pass key?" if chat else "What is the pass key? The pass key is"]
    return " ".join(p for p in parts if p)


def passkey(n: int, *, max_tokens: int = 128, digits: int = 6, position: float | None = None, seed: int = 0,
            count_tokens: Callable[[str], int] | None = None, chat: bool = False) -> list[dict]:
    """Passkey items in the paper's format: the filler repeated as often as fits in max_tokens (counted by
    count_tokens, e.g. len(tokenizer.encode(s)); without one, whitespace words), the key sentence after a
    `position` share of the filler (None: uniform at random per item). Keys have `digits` digits."""
    if digits < 1:
        raise ValueError(f"digits={digits}: expected at least 1")
    if position is not None and not 0.0 <= position <= 1.0:
        raise ValueError(f"position={position}: expected a share of the filler between 0 and 1, or None (random)")
    count = count_tokens or (lambda s: len(s.split()))
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        key = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(digits - 1))
        share = rng.random() if position is None else position
        fits = lambda m: count(passkey_prompt(key, m, round(share * m), chat)) <= max_tokens
        if not fits(0):
            raise ValueError(f"max_tokens={max_tokens}: the passkey prompt with a {digits}-digit key and no filler "
                             f"is already {count(passkey_prompt(key, 0, 0, chat))} tokens")
        lo, hi = 0, 1
        while fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        items.append({"prompt": passkey_prompt(key, lo, round(share * lo), chat), "answer": key, "kind": "contextual",
                      "filler": lo, "position": share})
    return items


def _data(name: str):
    return json.loads(resources.files("probes").joinpath("data", name).read_text(encoding="utf-8"))


def yes_no_prompt(question: str, chat: bool) -> str:
    return f"{question} Answer Yes or No." if chat else f"Question: {question}\nAnswer (Yes or No):"


def facts(path=None, *, category: str | None = None, chat: bool = False) -> list[dict]:
    """Yes/No fact questions: the shipped set (probes/data/facts.json) or the authors' fact-QA JSON, a list
    of {question, answer: bool, category}."""
    rows = _data("facts.json") if path is None else _read_json(path)
    where = "probes/data/facts.json" if path is None else str(path)
    if not isinstance(rows, list):
        raise ValueError(f"{where}: expected a JSON list of {{question, answer, category}}")
    items = []
    for i, r in enumerate(rows):
        _need(r, ("question", "answer"), f"{where}[{i}]")
        answer = _bool(r["answer"], f"{where}[{i}].answer")
        items.append({"prompt": yes_no_prompt(r["question"], chat), "answer": answer, "kind": "parametric",
                      "category": r.get("category", "")})
    if category is not None:
        cats = sorted({it["category"] for it in items})
        items = [it for it in items if it["category"].lower() == category.lower()]
        if not items:
            raise ValueError(f"{where}: no question has category={category!r}; categories: {', '.join(cats)}")
    return items


def capital_prompt(country: str, chat: bool) -> str:
    return f"What is the capital of {country}?" if chat else f"The capital of {country} is"


def capitals(*, chat: bool = False) -> list[dict]:
    """Capital-city completion: "The capital of France is" -> "Paris" (accepted spellings in a list)."""
    return [{"prompt": capital_prompt(r["country"], chat), "answer": [r["capital"], *r.get("aliases", [])],
             "kind": "parametric", "country": r["country"]} for r in _data("capitals.json")]


def conflict(*, seed: int = 0, chat: bool = False) -> list[dict]:
    """Capitals with a misleading sentence first ("Rome is the capital of France."): the answer is the true
    capital, "context_answer" the misleading one (claim 5: a disrupted model falls back on its weights)."""
    rows = _data("capitals.json")
    rng = random.Random(seed)
    items = []
    for i, r in enumerate(rows):
        wrong = rows[(i + rng.randrange(1, len(rows))) % len(rows)]["capital"]
        items.append({"prompt": f"{wrong} is the capital of {r['country']}. " + capital_prompt(r["country"], chat),
                      "answer": [r["capital"], *r.get("aliases", [])], "kind": "parametric",
                      "context_answer": wrong, "country": r["country"]})
    return items


def gsm8k(path, *, chat: bool = False) -> list[dict]:
    """GSM8K JSONL as on the HF hub: {"question", "answer"} with the final number after "####"."""
    items = []
    for where, r in _read_jsonl(path):
        _need(r, ("question", "answer"), where)
        if "####" not in r["answer"]:
            raise ValueError(f"{where}: answer has no '#### <number>' line")
        final = r["answer"].split("####")[-1].strip().replace(",", "")
        prompt = r["question"] if chat else f"Question: {r['question']}\nAnswer:"
        items.append({"prompt": prompt, "answer": final, "kind": "contextual"})
    return items


def aqua(path, *, chat: bool = False) -> list[dict]:
    """AQUA-RAT JSONL as on the HF hub: {"question", "options": ["A)21", ...], "correct": "A"}."""
    items = []
    for where, r in _read_jsonl(path):
        _need(r, ("question", "options", "correct"), where)
        if not isinstance(r["options"], list) or not r["options"]:
            raise ValueError(f"{where}: options must be a non-empty list like ['A)21', 'B)22']")
        correct = str(r["correct"]).strip().upper()
        if correct not in {o.strip()[0].upper() for o in r["options"]}:
            raise ValueError(f"{where}: correct={r['correct']!r} is not one of the options' letters")
        q = f"{r['question']}\nOptions: {' '.join(r['options'])}"
        prompt = f"{q}\nAnswer with the letter of the correct option." if chat else f"Question: {q}\nAnswer:"
        items.append({"prompt": prompt, "answer": correct, "options": r["options"], "kind": "contextual"})
    return items


def imdb(path, *, chat: bool = False) -> list[dict]:
    """IMDB reviews, JSONL or CSV with text,label (1/positive or 0/negative)."""
    items = []
    for where, r in _read_rows(path):
        _need(r, ("text", "label"), where)
        label = str(r["label"]).strip().lower()
        if label not in ("0", "1", "pos", "neg", "positive", "negative"):
            raise ValueError(f"{where}: label={r['label']!r}: expected 0/1 or negative/positive")
        gold = "Positive" if label in ("1", "pos", "positive") else "Negative"
        q = f"Review: {r['text']}\nIs the sentiment of this review Positive or Negative?"
        items.append({"prompt": q if chat else q + "\nAnswer:", "answer": gold, "kind": "contextual"})
    return items


def cities(path, *, chat: bool = False) -> list[dict]:
    """Cities CSV (statement,label,city,country,correct_country): "The city of X is in Y." asked as
    "Is the city of X in Y?", answered by the label."""
    items = []
    for where, r in _read_rows(path):
        _need(r, ("label", "city", "country"), where)
        q = f"Is the city of {r['city']} in {r['country']}?"
        items.append({"prompt": yes_no_prompt(q, chat), "answer": _bool(r["label"], f"{where}.label"),
                      "kind": "parametric", "correct_country": r.get("correct_country", "")})
    return items


def jsonl(path, *, kind: str = "contextual", chat: bool = False) -> list[dict]:
    """Generic task file: one {"prompt", "answer"} per line; other keys (kind, options, ...) are kept."""
    items = []
    for where, r in _read_jsonl(path):
        _need(r, ("prompt", "answer"), where)
        items.append({"kind": kind, **r})
    return items


TASKS = {
    # name: (needs a file, scorer, default max_new_tokens)
    "passkey": (False, "contains", None), "facts": (False, "yes_no", 4), "capitals": (False, "contains", 6),
    "conflict": (False, "contains", 6), "gsm8k": (True, "last_number", 256), "aqua": (True, "option", 128),
    "imdb": (True, "sentiment", 4), "cities": (True, "yes_no", 4), "jsonl": (True, "contains", 32),
}


def build(name: str, *, task_file=None, n: int | None = None, seed: int = 0, chat: bool = False,
          scorer: str | None = None, max_new_tokens: int | None = None, count_tokens=None, **options) -> Task:
    """A task by name with up to n items (a seeded sample; Yes/No tasks balanced between Yes and No).
    options: passkey max_tokens, digits, position; facts category; jsonl kind."""
    if name not in TASKS:
        raise ValueError(f"task={name!r}: expected one of {', '.join(TASKS)}")
    needs_file, default_scorer, default_tokens = TASKS[name]
    if needs_file and task_file is None:
        raise ValueError(f"task {name!r} reads a file: give --task-file (see probes.tasks.{name})")
    if name == "passkey":
        items = passkey(n or 100, seed=seed, chat=chat, count_tokens=count_tokens, **options)
        default_tokens = options.get("digits", 6) + 16
    elif name == "facts":
        items = facts(task_file, chat=chat, **options)
    elif name == "conflict":
        items = conflict(seed=seed, chat=chat, **options)
    elif name == "capitals":
        items = capitals(chat=chat, **options)
    else:
        items = globals()[name](task_file, chat=chat, **options)
    items = [{**it, "task": name} for it in _sample(items, n, seed)]
    return Task(name, items, scorer or default_scorer, max_new_tokens or default_tokens)


def _sample(items, n, seed):
    if n is None or n >= len(items):
        return items
    rng = random.Random(seed)
    if all(isinstance(it["answer"], bool) for it in items):
        yes = [it for it in items if it["answer"]]
        no = [it for it in items if not it["answer"]]
        rng.shuffle(yes)
        rng.shuffle(no)
        n_yes = min(len(yes), n - min(len(no), n // 2))
        picked = yes[:n_yes] + no[:n - n_yes]
        rng.shuffle(picked)
        return picked
    return rng.sample(items, n)


def _need(row, keys, where):
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with keys {', '.join(keys)}, got {type(row).__name__}")
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(missing)} (found {', '.join(sorted(row)) or 'none'})")


def _bool(value, where):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ValueError(f"{where}={value!r}: expected true/false, yes/no or 1/0")


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _read_jsonl(path):
    rows = [(f"{path}:{n}", row) for n, row in read_jsonl(path)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def _read_rows(path):
    """JSONL, or CSV with a header row when the file name ends in .csv."""
    if str(path).lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = [(f"{path}:{n}", r) for n, r in enumerate(csv.DictReader(f), 2)]
        if not rows:
            raise ValueError(f"{path}: no rows under the CSV header")
        return rows
    return _read_jsonl(path)

"""The paper's tasks as lists of items: passkey retrieval, Yes/No facts, capitals, a knowledge-conflict
variant, and loaders for GSM8K, AQUA, IMDB, Cities, the authors' fact QA and generic JSONL.

An item is a dict: "prompt" (text), "answer", "kind" ("contextual": the answer is in the prompt or must be
worked out from it; "parametric": it must come from the weights), plus extras a scorer or report reads
("options", "category", "context_answer"). `chat=True` phrases prompts as questions for a chat template;
otherwise they end where a base model should continue.
"""
from __future__ import annotations

import csv
import functools
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

AUTHORS = "github.com/MingyuJ666/Rope_with_LLM@443a763"
"""The authors' code that protocol="authors", the chat lengths and the system prompts follow."""
AUTHORS_PASSKEY_INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
                               "memorize it. I will quiz you about the important information there.")
AUTHORS_CONFLICT = "You should Know the new geography knowledge: {city} is a new city in The USA."
"""The misleading sentence of the authors' knowledge conflict (run_datasets.py:316-318); their run uses
it with city=ShiJiaZhuang for every question ("authors"), the per-question city is "authors_city"."""

_YES_NO_SYSTEM = "You are a helpful {expert} who can help me. Answer ''Yes'' or ''No''."
FACT_SYSTEM = {"sports": "sports expert", "art": "art expert", "arts": "art expert", "technology": "tech expert",
               "tech": "tech expert", "geography": "geography expert"}
"""Category -> the expert of the authors' Yes/No system prompt (run_datasets.py:588, 636, 734; 685 for
celebrity and any other category: "expert"). Their quotes are doubled as in their source."""
SYSTEM = {
    "gsm8k": "You are a helpful math expert who can help me. Answer the question and put the final answer at "
             "the end of the sentence.",
    "aqua": "You are a helpful math expert who can help me. Put the final option and answer at the end of the "
            "sentence. Do not show other incorrect options.",
    "imdb": "You are a helpful movie critic who can help me. Answer ''Negative'' or ''Positive''",
    "cities": _YES_NO_SYSTEM.format(expert="geography expert"),
    "passkey": "You are a helpful expert who can help me. Answer the question and put the final answer at the "
               "end of the sentence.",
}
"""The authors' system prompts for Llama-3 (run_datasets.py:442, 383, 512, 274; llm_example_save_attn.py:414);
the conflict task uses the cities one (run_datasets.py:329), facts one per category (FACT_SYSTEM)."""


class PromptTooLong(ValueError):
    """Prompts that do not fit a token budget (a passkey max_tokens, a model's max_seq_len)."""


class Task(NamedTuple):
    name: str
    items: list[dict]
    scorer: str
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    """Decoded outputs are cut at the first of these strings (probes.experiment.evaluate)."""


class TaskSpec(NamedTuple):
    needs_file: bool
    scorer: str
    base_tokens: int
    """max_new_tokens of a prompt without chat template: a base model continues the prompt's answer line."""
    chat_tokens: int
    """max_new_tokens through a chat template: the authors' Llama-3 budget, which EOS ends early."""
    base_stop: tuple[str, ...]
    """Stop strings without chat template: where a base model starts inventing the next question."""


_LINE = ("\n",)
_NEXT_QUESTION = ("\nQuestion:", "\n\n")
TASKS = {
    "passkey": TaskSpec(False, "contains", 22, 2000, _LINE),  # base: digits + 16; llm_example_save_attn.py:415
    "facts": TaskSpec(False, "yes_no", 4, 300, _LINE),  # run_datasets.py:594
    "capitals": TaskSpec(False, "contains", 6, 32, _LINE),
    "conflict": TaskSpec(False, "contains", 6, 300, _LINE),  # run_datasets.py:328
    "gsm8k": TaskSpec(True, "answer_number", 256, 500, _NEXT_QUESTION),  # run_datasets.py:441
    "aqua": TaskSpec(True, "option", 128, 1200, _NEXT_QUESTION),  # run_datasets.py:381
    "imdb": TaskSpec(True, "sentiment", 4, 2000, _LINE),  # run_datasets.py:511
    "cities": TaskSpec(True, "yes_no", 4, 300, _LINE),  # run_datasets.py:273
    "jsonl": TaskSpec(True, "contains", 32, 32, ()),
}
"""Per task: scorer, output lengths and stop strings. The authors' Llama path caps prompt + answer at these
lengths (max_length, run_datasets.py:183); we give them as new tokens, a budget at least as large."""


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
            raise PromptTooLong(f"max_tokens={max_tokens}: the passkey prompt with a {digits}-digit key and no filler "
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


def passkey_authors(n: int, *, max_tokens: int = 128, digits: int = 6, insert_position: int = 50,
                    interval: int = 500, question: str = "", count_tokens: Callable[[str], int] | None = None
                    ) -> list[dict]:
    """Passkey items as the authors' generator makes them (syn_data/generate_syn_data.py:103-191, settings of
    scripts/run_passkey.sh: insert_position 50, interval 500, 200 examples). Their lengths are counted on
    the template with "{KEY}" unfilled, the key goes after a number of fillers drawn uniformly from
    [(insert_position - instruction) // filler, (insert_position + interval - instruction) // filler], which
    may exceed the fillers that fit (the prompt then runs past max_tokens: see "tokens" per item), and the
    parts are joined by newlines. `question` is appended after a space: their Llama-3 run adds none, their
    Qwen run " What is the passkey?" (llm_example_save_attn.py:403, 416). Seeded as theirs:
    numpy RandomState(max_tokens + insert_position)."""
    import numpy as np

    count = count_tokens or (lambda s: len(s.split()))
    prefix_len, filler_len = count(AUTHORS_PASSKEY_INSTRUCTION), count(PASSKEY_FILLER)
    key_len = count(PASSKEY_KEY.replace("{key}", "{KEY}"))
    n_filler = (max_tokens - key_len - prefix_len) // filler_len
    if max_tokens <= key_len + prefix_len or n_filler < 2:
        raise PromptTooLong(f"max_tokens={max_tokens}: the authors' generator needs room for 2 fillers "
                            f"(instruction {prefix_len}, key sentence {key_len}, filler {filler_len} tokens)")
    rng = np.random.RandomState(seed=max_tokens + insert_position)

    def draw_key(length):
        if length > 18:
            head = int(rng.randint(10 ** 17, 10 ** 18 - 1))
            return head * 10 ** (length - 18) + draw_key(length - 18)
        return int(rng.randint(10 ** (length - 1), 10 ** length - 1))

    lo = (insert_position - prefix_len) // filler_len
    hi = (insert_position + interval - prefix_len) // filler_len
    items = []
    for _ in range(n):
        key = str(draw_key(digits))
        before = int(rng.randint(lo, hi + 1))
        parts = [AUTHORS_PASSKEY_INSTRUCTION] + [PASSKEY_FILLER] * before + [PASSKEY_KEY.format(key=key)] \
            + [PASSKEY_FILLER] * (n_filler - before)
        prompt = "\n".join(parts) + (f" {question}" if question else "")
        items.append({"prompt": prompt, "answer": key, "kind": "contextual", "filler": max(n_filler, before),
                      "fillers_before": before, "tokens": count(prompt)})
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
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):  # the authors' datasets/*_qa.json
        rows = rows["data"]
    if not isinstance(rows, list):
        raise ValueError(f"{where}: expected a JSON list of {{question, answer, category}} (or {{\"data\": [...]}})")
    items = []
    for i, r in enumerate(rows):
        _need(r, ("question", "answer"), f"{where}[{i}]")
        answer = _bool(r["answer"], f"{where}[{i}].answer")
        cat = r.get("category", "")
        items.append({"prompt": yes_no_prompt(r["question"], chat), "answer": answer, "kind": "parametric",
                      "category": cat, "system": fact_system(cat)})
    if category is not None:
        cats = sorted({it["category"] for it in items})
        items = [it for it in items if it["category"].lower() == category.lower()]
        if not items:
            raise ValueError(f"{where}: no question has category={category!r}; categories: {', '.join(cats)}")
    return items


def fact_system(category: str) -> str:
    """The authors' system prompt for a Yes/No question of this category."""
    return _YES_NO_SYSTEM.format(expert=FACT_SYSTEM.get(str(category).lower(), "expert"))


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
        if chat:  # the authors' wording (run_datasets.py:382)
            prompt = f"{r['question']} Choose the correct answer from the options: {' '.join(r['options'])}"
        else:
            prompt = f"Question: {r['question']}\nOptions: {' '.join(r['options'])}\nAnswer:"
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


US = {"the united states", "united states", "the usa", "usa", "the united states of america",
      "united states of america"}


def conflict_authors(path, *, city: str | None = "ShiJiaZhuang", chat: bool = False) -> list[dict]:
    """The authors' knowledge conflict (run_datasets.py:304-352): Cities questions after AUTHORS_CONFLICT,
    the answer still the true label. city=None names each question's own city, so the sentence
    contradicts the question; then "context_answer" is what the sentence implies (in the USA or not)."""
    items = []
    for where, r in _read_rows(path):
        _need(r, ("label", "city", "country"), where)
        q = f"{AUTHORS_CONFLICT.format(city=city or r['city'])} Is the city of {r['city']} in {r['country']}?"
        item = {"prompt": q if chat else f"Question: {q}\nAnswer (Yes or No):",
                "answer": _bool(r["label"], f"{where}.label"), "kind": "parametric", "city": r["city"]}
        if city is None:
            item["context_answer"] = r["country"].strip().lower() in US
        items.append(item)
    return items


def jsonl(path, *, kind: str = "contextual", chat: bool = False) -> list[dict]:
    """Generic task file: one {"prompt", "answer"} per line; other keys (kind, options, ...) are kept."""
    items = []
    for where, r in _read_jsonl(path):
        _need(r, ("prompt", "answer"), where)
        items.append({"kind": kind, **r})
    return items


PROTOCOLS = {"passkey": ("ours", "authors"), "conflict": ("ours", "authors", "authors_city")}


def build(name: str, *, task_file=None, n: int | None = None, seed: int = 0, chat: bool = False,
          scorer: str | None = None, max_new_tokens: int | None = None, count_tokens=None,
          protocol: str = "ours", system: str | None = None, stop=None, **options) -> Task:
    """A task by name with up to n items (a seeded sample; Yes/No tasks balanced between Yes and No).

    protocol: "ours" or the authors' generator ("authors"; conflict also "authors_city"), see PROTOCOLS.
    chat picks the prompt wording, the default length (TaskSpec) and stop strings (none: EOS ends a chat
    answer). Items carry the authors' system prompt as "system" (system="" drops it, a string replaces it).
    options: passkey max_tokens, digits, position (ours) or insert_position, interval, question (authors');
    facts category; jsonl kind."""
    if name not in TASKS:
        raise ValueError(f"task={name!r}: expected one of {', '.join(TASKS)}")
    if protocol not in PROTOCOLS.get(name, ("ours",)):
        raise ValueError(f"protocol={protocol!r} for task {name!r}: expected one of "
                         f"{', '.join(PROTOCOLS.get(name, ('ours',)))}")
    spec = TASKS[name]
    default_scorer, default_tokens = spec.scorer, spec.chat_tokens if chat else spec.base_tokens
    if (spec.needs_file or protocol.startswith("authors") and name == "conflict") and task_file is None:
        raise ValueError(f"task {name!r} reads a file: give --task-file (see probes.tasks.{name})")
    if name == "passkey":
        make = passkey_authors if protocol == "authors" else functools.partial(passkey, seed=seed, chat=chat)
        items = make(n or 100, count_tokens=count_tokens, **options)
        if not chat:
            default_tokens = options.get("digits", 6) + 16
    elif name == "facts":
        items = facts(task_file, chat=chat, **options)
    elif name == "conflict" and protocol != "ours":
        items = conflict_authors(task_file, chat=chat, **({"city": None} if protocol == "authors_city" else {}))
        default_scorer = "yes_no"
    elif name == "conflict":
        items = conflict(seed=seed, chat=chat, **options)
    elif name == "capitals":
        items = capitals(chat=chat, **options)
    else:
        items = globals()[name](task_file, chat=chat, **options)
    default_system = SYSTEM.get("cities" if name == "conflict" and protocol != "ours" else name)
    items = [{**it, "task": name} for it in _sample(items, n, seed)]
    for it in items:
        it["system"] = system if system is not None else it.get("system", default_system)
        if not it["system"]:
            del it["system"]
    stops = tuple(spec.base_stop if not chat else ()) if stop is None else tuple(stop)
    return Task(name, items, scorer or default_scorer, max_new_tokens or default_tokens, stops)


def cut_at_stop(text: str, stop) -> str:
    """text up to the first occurrence of any stop string (all of it when none occurs)."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[:min(ends)] if ends else text


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

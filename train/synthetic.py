"""A synthetic byte-level corpus mixing the two kinds of knowledge the paper separates.

- contextual: a pass key ("The pass key is #7. Remember it. #7 is the pass key.") and, when
  data.recall_pairs > 0, a line of pairs ("Pairs: C47, J83."), asked about later in the same
  document ("What is the pass key? #7.", "Recall: J83."), so the answer must be copied;
- parametric: questions about a fixed table of made-up facts ("Q: What is the capital of Vorelu?
  A: Tisamo.") that recur across documents and must be memorised;
- filler: the paper's passkey filler sentences.

Contextual answers follow a cue used nowhere else ("#", or a capital reserved for pairs), and a
document's digits do not repeat until all ten are used, so one-token induction can copy them.
Measured with tiny_rope (2 layers, d 128, 8 x 256 tokens a step, 2 CPU cores): copying a key of
several tokens needs two composed attention layers (an induction circuit), which did not form in
300 steps even with 30% of the tokens copyable (nor in 1500 steps of the earlier corpus); a key
that is the only digit of its document is found by one attention layer and was copied after
100-200 steps (3 seeds). Longer runs of tiny_rope (facts 50/50 in every one): 3-digit keys, 1000 steps:
0/50 held-out keys copied; 6-digit keys, 1700 steps: 17/50, but 1/50 with a 2500-step schedule, 0/50 with
lr 1e-2 or 8 heads (copying starts after ~1000 steps and is fragile). So the tiny configs use 1-digit keys
and no pairs (data.passkey_digits=1, data.recall_pairs=0); longer keys and pairs are there for longer runs.

Every sequence is a pure function of (seed, split, step, row). `eval_items` builds held-out prompts
that end right before the answer, for scoring by generation.
"""
from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np

from minimal_lm.files import write_atomic
from train.config import DataConfig

BOS = 256
VOCAB_SIZE = 257  # bytes + <|endoftext|>
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
TEMPLATES = ("What is the capital of {}?", "Who founded {}?", "What does {} export?")
CUE = "#"
RECALL_KEYS = "CEIJOUXY"  # capitals that start no other word of the corpus
PASSKEY_QUESTION = f"What is the pass key? {CUE}"
RECALL_QUESTION = "Recall: "
SPLITS = {"train": 0, "eval": 1, "items": 2}
KINDS = {"contextual": ("passkey", "recall"), "parametric": ("fact",)}
LINES = ("ask", "passkey", "pairs", "fact", "filler")
WEIGHTS = (0.35, 0.4, 0.15, 0.3, 0.15)  # chance of each kind of line, among those available
PASSKEY_ASKS = (3, 4)  # a pass key is asked this many times (one drawn per document)


class Fact(NamedTuple):
    entity: str
    question: str
    answer: str


def facts_table(num_facts: int, seed: int = 0) -> list[Fact]:
    """`num_facts` made-up facts with distinct entities and answers, fixed by `seed`."""
    rng = np.random.default_rng([seed, 0xFAC7])
    words: set[str] = set()

    def fresh():
        while (w := _word(rng, int(rng.integers(2, 4))).capitalize()) in words:
            pass
        words.add(w)
        return w

    facts = []
    for i in range(num_facts):
        entity = fresh()
        facts.append(Fact(entity, TEMPLATES[i % len(TEMPLATES)].format(entity), fresh()))
    return facts


def _word(rng, syllables):
    return "".join("bdfgklmnprstvz"[rng.integers(14)] + "aeiou"[rng.integers(5)] for _ in range(syllables))


def tasks(kind: str, data: DataConfig) -> tuple[str, ...]:
    """The item tasks of `kind` that `data` trains: recall only when it has pairs lines."""
    if kind not in KINDS:
        raise ValueError(f"eval_items kind={kind!r}: expected one of {', '.join(KINDS)}")
    return tuple(t for t in KINDS[kind] if t != "recall" or data.recall_pairs > 0)


class _Doc:
    """A document grown line by line; contextual items queue questions asked on later lines."""

    def __init__(self, rng, data: DataConfig, facts: list[Fact]):
        self.rng, self.data, self.facts = rng, data, facts
        self.lines: list[str] = []
        self.pending: list[tuple[str, str]] = []
        self.used: set[str] = set()  # "passkey", "pairs", fact entities: each at most once
        self.pool: list[str] = []

    def __len__(self):
        return sum(len(s) + 1 for s in self.lines)

    def digits(self, n: int) -> str:
        """`n` digits; none repeats within the document until all ten have been drawn."""
        out = []
        for _ in range(n):
            if not self.pool:
                self.pool = [str(d) for d in self.rng.permutation(10)]
            out.append(self.pool.pop())
        return "".join(out)

    def passkey(self) -> list[tuple[str, str]]:
        key = self.digits(self.data.passkey_digits)
        self.used.add("passkey")
        self.lines.append(f"The pass key is {CUE}{key}. Remember it. {CUE}{key} is the pass key.")
        return [(PASSKEY_QUESTION, key)] * int(self.rng.choice(PASSKEY_ASKS))

    def pairs(self) -> list[tuple[str, str]]:
        keys = [RECALL_KEYS[i] for i in self.rng.permutation(len(RECALL_KEYS))[: self.data.recall_pairs]]
        values = [self.digits(2) for _ in keys]
        self.used.add("pairs")
        self.lines.append("Pairs: " + ", ".join(k + v for k, v in zip(keys, values)) + ".")
        return [(RECALL_QUESTION + k, v) for k, v in zip(keys, values)]

    def fact(self) -> tuple[str, str] | None:
        fresh = [f for f in self.facts if f.entity not in self.used]
        if not fresh:
            return None
        f = fresh[self.rng.integers(len(fresh))]
        self.used.add(f.entity)
        return f"Q: {f.question} A: ", f.answer

    def filler(self):
        start, n = self.rng.integers(len(FILLER)), self.rng.integers(1, 5)
        self.lines.append(" ".join(FILLER[(start + i) % len(FILLER)] for i in range(n)))

    def grow(self, contextual=True):
        """Add one line, drawn by WEIGHTS among the kinds available: a queued question, a pass key,
        a pairs line, a fact Q/A, or filler."""
        available = (bool(self.pending), contextual and "passkey" not in self.used,
                     contextual and self.data.recall_pairs > 0 and "pairs" not in self.used,
                     len(self.used) < len(self.facts) + 2, True)
        w = np.array(WEIGHTS) * available
        line = LINES[self.rng.choice(len(LINES), p=w / w.sum())]
        if line == "ask":
            prompt, answer = self.pending.pop(int(self.rng.integers(len(self.pending))))
            self.lines.append(f"{prompt}{answer}.")
        elif line == "passkey":
            self.pending.extend(self.passkey())
        elif line == "pairs":
            qa = self.pairs()
            self.pending.extend(qa[i] for i in self.rng.permutation(len(qa))[: self.rng.integers(1, len(qa) + 1)])
        elif line == "fact" and (qa := self.fact()):
            self.lines.append(f"{qa[0]}{qa[1]}.")
        else:
            self.filler()

    def fill(self, until: int, most: int) -> None:
        """Grow without contextual items to at least `until` characters, unless the next line would
        take the document past `most`."""
        while len(self) < until:
            self.grow(contextual=False)
            if len(self) > most:
                self.lines.pop()
                return

    def text(self):
        return "\n".join(self.lines)


def sequence(data: DataConfig, split: str, step: int, row: int, length: int, facts=None) -> np.ndarray:
    """`length` token ids (BOS, then UTF-8 bytes of one document), a pure function of its arguments."""
    doc = _Doc(np.random.default_rng([data.seed, SPLITS[split], step, row]), data,
               facts or facts_table(data.num_facts, data.facts_seed))
    while len(doc) < length:
        doc.grow()
    return encode(doc.text())[:length]


def batch(data: DataConfig, split: str, step: int, batch_size: int, length: int, facts=None) -> np.ndarray:
    facts = facts or facts_table(data.num_facts, data.facts_seed)
    return np.stack([sequence(data, split, step, r, length, facts) for r in range(batch_size)])


def encode(text: str, bos: bool = True) -> np.ndarray:
    ids = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    return np.concatenate([[BOS], ids]).astype(np.int32) if bos else ids


def decode(ids) -> str:
    return bytes(int(i) for i in ids if i < 256).decode("utf-8", errors="replace")


def eval_items(kind: str, n: int, seed: int, data: DataConfig | None = None, prompt_chars: int = 200) -> list[dict]:
    """`n` held-out items: {"prompt", "answer", "kind", "task"}. The prompt is a document like the
    training ones (at most `prompt_chars` long, without BOS: the tokenizer adds it) ending right
    before the answer. Contextual items ask for the pass key (or, when `data` has pairs, a pair's
    value) stated earlier in the prompt, after filler and facts; parametric items ask a fact from
    the training facts table that the prompt does not state."""
    data = data or DataConfig()
    kinds = tasks(kind, data)
    facts = facts_table(data.num_facts, data.facts_seed)
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, SPLITS["items"], list(KINDS).index(kind), i])
        task = kinds[i % len(kinds)]
        doc = _Doc(rng, data, facts)
        target = doc.fact() if task == "fact" else None
        budget = prompt_chars - 60
        doc.fill(rng.integers(0, budget // 2 + 1), budget // 2 + 1)
        if task == "passkey":
            target = doc.passkey()[0]
        elif task == "recall":
            qa = doc.pairs()
            target = qa[rng.integers(len(qa))]
        prompt, answer = target
        doc.fill(budget, prompt_chars - len(prompt))
        items.append({"prompt": (doc.text() + "\n" if doc.lines else "") + prompt, "answer": answer,
                      "kind": kind, "task": task})
    return items


def write_items(path, n: int, seed: int, data: DataConfig | None = None) -> list[dict]:
    """`n` contextual then `n` parametric held-out items (eval_items) as JSONL at `path`, written
    atomically: the task file of `python -m probes disrupt --task jsonl`, whose rows keep their kind."""
    items = [it for kind in KINDS for it in eval_items(kind, n, seed, data)]
    write_atomic(path, "".join(json.dumps(it) + "\n" for it in items))
    return items


def unigram_entropy(data: DataConfig, length: int, rows: int = 256) -> float:
    """Entropy (nats per token) of the corpus's predicted tokens, estimated on `rows` training rows:
    the loss of the best model that ignores context."""
    counts = np.bincount(batch(data, "train", 0, rows, length)[:, 1:].ravel(), minlength=VOCAB_SIZE)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())

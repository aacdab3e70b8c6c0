"""A synthetic byte-level corpus mixing the two kinds of knowledge the paper separates:

- contextual: a pass key ("The pass key is 48213. Remember it. 48213 is the pass key.") or a list
  of key=value pairs, asked about later in the same sequence, so the answer must be copied;
- parametric: questions about a fixed table of made-up facts ("Q: What is the capital of Vorelu?
  A: Tisamo.") that recur across sequences and must be memorised;
- filler: the paper's passkey filler sentences.

Every sequence is a pure function of (seed, split, step, row). `eval_items` builds held-out prompts
that end right before the answer, for scoring by generation. Measured on 2 CPU cores (tiny_rope):
the formats are learned in the shipped 150 steps, the facts by about 1000 steps; copying pass keys
was not learned within 1500 steps (it needs longer runs).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from train.config import DataConfig

BOS = 256
VOCAB_SIZE = 257  # bytes + <|endoftext|>
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
TEMPLATES = ("What is the capital of {}?", "Who founded {}?", "What does {} export?")
PASSKEY_QUESTION = "What is the pass key? The pass key is "
SPLITS = {"train": 0, "eval": 1, "items": 2}
KINDS = {"contextual": ("passkey", "recall"), "parametric": ("fact",)}


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


class _Doc:
    """A document grown line by line; contextual items queue a question asked on a later line."""

    def __init__(self, rng, data: DataConfig, facts: list[Fact]):
        self.rng, self.data, self.facts = rng, data, facts
        self.lines: list[str] = []
        self.pending: list[tuple[str, str]] = []
        self.used: set[str] = set()  # "passkey", "recall", fact entities: each at most once

    def __len__(self):
        return sum(len(s) + 1 for s in self.lines)

    def passkey(self):
        key = "".join(str(d) for d in self.rng.integers(0, 10, self.data.passkey_digits))
        self.used.add("passkey")
        self.lines.append(f"The pass key is {key}. Remember it. {key} is the pass key.")
        return PASSKEY_QUESTION, key

    def recall(self):
        keys = []
        while len(keys) < self.data.recall_pairs:
            if (k := _word(self.rng, 1) + "xyw"[self.rng.integers(3)]) not in keys:
                keys.append(k)
        values = [str(v) for v in self.rng.integers(10, 100, len(keys))]
        self.used.add("recall")
        self.lines.append("Pairs: " + ", ".join(f"{k}={v}" for k, v in zip(keys, values)) + ".")
        return [(f"What is {k}? {k}=", v) for k, v in zip(keys, values)]

    def fact(self):
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
        """Add one random line: a queued question, a new contextual item, a fact Q/A, or filler."""
        r = self.rng.random()
        if self.pending and r < 0.35:
            prompt, answer = self.pending.pop(int(self.rng.integers(len(self.pending))))
            self.lines.append(f"{prompt}{answer}.")
        elif r < 0.5 and contextual and "passkey" not in self.used:
            self.pending.append(self.passkey())
        elif r < 0.65 and contextual and "recall" not in self.used:
            qa = self.recall()
            self.pending.extend(qa[i] for i in self.rng.permutation(len(qa))[: self.rng.integers(1, 3)])
        elif r < 0.85 and (qa := self.fact()):
            self.lines.append(f"{qa[0]}{qa[1]}.")
        else:
            self.filler()

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
    training ones (about `prompt_chars` long, without BOS: the tokenizer adds it) ending right before
    the answer. Contextual items ask for a pass key or a recall value given earlier in the prompt;
    parametric items ask a fact from the training facts table that the prompt does not state."""
    if kind not in KINDS:
        raise ValueError(f"eval_items kind={kind!r}: expected one of {', '.join(KINDS)}")
    data = data or DataConfig()
    facts = facts_table(data.num_facts, data.facts_seed)
    items = []
    for i in range(n):
        rng = np.random.default_rng([seed, SPLITS["items"], list(KINDS).index(kind), i])
        task = KINDS[kind][i % len(KINDS[kind])]
        doc = _Doc(rng, data, facts)
        target = doc.fact() if task == "fact" else None
        budget = prompt_chars - 60
        before = rng.integers(0, budget // 2 + 1)
        while len(doc) < before:
            doc.grow(contextual=False)
        if task == "passkey":
            doc.used.add("recall")
            target = doc.passkey()
        elif task == "recall":
            doc.used.add("passkey")
            qa = doc.recall()
            target = qa[rng.integers(len(qa))]
        while len(doc) < budget:
            doc.grow(contextual=False)
        prompt, answer = target
        items.append({"prompt": (doc.text() + "\n" if doc.lines else "") + prompt, "answer": answer,
                      "kind": kind, "task": task})
    return items


def unigram_entropy(data: DataConfig, length: int, rows: int = 256) -> float:
    """Entropy (nats per token) of the corpus's predicted tokens, estimated on `rows` training rows:
    the loss of the best model that ignores context."""
    counts = np.bincount(batch(data, "train", 0, rows, length)[:, 1:].ravel(), minlength=VOCAB_SIZE)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


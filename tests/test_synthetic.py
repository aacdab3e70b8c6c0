"""The synthetic corpus: deterministic, well-formed, and its items answerable the way eval_items asks."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from train import synthetic
from train.config import DataConfig
from train.prepare import byte_tokenizer

DATA = DataConfig()
FACTS = synthetic.facts_table(DATA.num_facts, DATA.facts_seed)
DOCS = [synthetic.decode(synthetic.sequence(DATA, "train", step, 0, 4000)) for step in range(60)]


def test_batches_are_a_pure_function_of_seed_and_step():
    a = synthetic.batch(DATA, "train", 7, 4, 65)
    assert a.shape == (4, 65) and a.dtype == np.int32
    assert np.array_equal(a, synthetic.batch(DATA, "train", 7, 4, 65))
    assert not np.array_equal(a, synthetic.batch(DATA, "train", 8, 4, 65))
    assert not np.array_equal(a, synthetic.batch(DataConfig(seed=1), "train", 7, 4, 65))
    assert not np.array_equal(a, synthetic.batch(DATA, "eval", 7, 4, 65))
    assert np.array_equal(a[2], synthetic.sequence(DATA, "train", 7, 2, 65))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), step=st.integers(0, 10**6), row=st.integers(0, 1000), length=st.integers(2, 600))
def test_sequences_are_bos_then_printable_ascii(seed, step, row, length):
    ids = synthetic.sequence(DataConfig(seed=seed), "train", step, row, length)
    assert len(ids) == length and ids[0] == synthetic.BOS
    text = synthetic.decode(ids[1:])
    assert all(c == "\n" or " " <= c <= "~" for c in text)


def test_facts_table_is_fixed_and_distinct():
    assert synthetic.facts_table(64, 0) == FACTS and synthetic.facts_table(64, 1) != FACTS
    words = [f.entity for f in FACTS] + [f.answer for f in FACTS]
    assert len(set(words)) == len(words) == 128
    assert all(f.entity in f.question for f in FACTS)


def test_training_documents_ask_what_they_stated():
    """Every question in a training document is answered consistently: pass keys and pairs by what
    the same document stated earlier, facts by the fixed table."""
    table = {f.question: f.answer for f in FACTS}
    counts = {"passkey": 0, "recall": 0, "fact": 0}
    for doc in DOCS:
        lines = doc.split("\n")
        for i, line in enumerate(lines[:-1]):
            if m := re.fullmatch(r"What is the pass key\? The pass key is (\d+)\.", line):
                assert any(s.startswith(f"The pass key is {m[1]}. Remember it.") for s in lines[:i])
                counts["passkey"] += 1
            elif m := re.fullmatch(r"What is (\w+)\? \1=(\d+)\.", line):
                assert any(s.startswith("Pairs: ") and f"{m[1]}={m[2]}" in s for s in lines[:i])
                counts["recall"] += 1
            elif m := re.fullmatch(r"Q: (.*\?) A: (\w+)\.", line):
                assert table[m[1]] == m[2]
                counts["fact"] += 1
        assert sum("The pass key is" in s and "Remember" in s for s in lines) <= 1
    assert min(counts.values()) >= 20, counts


@pytest.mark.parametrize("kind", ["contextual", "parametric"])
def test_eval_items(kind):
    items = synthetic.eval_items(kind, 12, seed=3)
    assert items == synthetic.eval_items(kind, 12, seed=3) and items != synthetic.eval_items(kind, 12, seed=4)
    table = {f.question: f.answer for f in FACTS}
    for it in items:
        assert it["kind"] == kind and 140 <= len(it["prompt"]) <= 260
        prompt, answer = it["prompt"], it["answer"]
        if it["task"] == "passkey":
            assert prompt.endswith(synthetic.PASSKEY_QUESTION) and f"The pass key is {answer}. Remember it." in prompt
        elif it["task"] == "recall":
            key = re.search(r"What is (\w+)\? \1=$", prompt)[1]
            assert f"{key}={answer}," in prompt or f"{key}={answer}." in prompt
        else:
            question = re.search(r"Q: ([^\n]*\?) A: $", prompt)[1]
            assert table[question] == answer and answer not in prompt
            assert sum(f.entity in prompt for f in FACTS if f.question == question) == 1
    assert {it["task"] for it in items} == set(synthetic.KINDS[kind])


def test_eval_prompts_never_appear_in_training_rows():
    train = {synthetic.decode(r) for r in synthetic.batch(DATA, "train", 0, 64, 300)}
    for it in synthetic.eval_items("contextual", 20, seed=0):
        assert not any(it["prompt"] in t for t in train)


def test_byte_tokenizer_matches_the_training_ids():
    tok = byte_tokenizer()
    text = "The pass key is 48213.\nQ: Who founded Sapi? A: "
    assert tok.encode(text).ids == synthetic.encode(text).tolist()
    assert tok.encode(text, add_special_tokens=False).ids == synthetic.encode(text, bos=False).tolist()
    assert tok.decode(synthetic.encode(text).tolist()) == text == synthetic.decode(synthetic.encode(text))
    assert tok.get_vocab_size() == synthetic.VOCAB_SIZE


def test_unigram_entropy():
    h = synthetic.unigram_entropy(DATA, 257)
    assert 2.5 < h < np.log(synthetic.VOCAB_SIZE)
    counts = np.bincount(synthetic.batch(DATA, "train", 5, 64, 257)[:, 1:].ravel(), minlength=257) + 1e-12
    p = counts / counts.sum()
    assert abs(-(p * np.log(p)).sum() - h) < 0.1

"""Tasks, loaders and scorers: the paper's formats, hand-written edge cases, perplexity and distinct-2."""
import fnmatch
import json
import tomllib
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest

from hf_testlib import random_params
from minimal_lm import ModelConfig, forward
from probes import scoring, tasks
from probes.scoring import contains, distinct_n, first_yes_no, last_number, option, sentiment, yes_no

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("output, answer, want", [
    ("The pass key is 383816.", "383816", True), ("383816", "383816", True), ("It is 38381.", "383816", False),
    ("the capital is paris", ["Paris"], True), ("Bogotá, of course", ["Bogota", "Bogotá"], True),
])
def test_contains(output, answer, want):
    assert contains(output, answer) is want


@pytest.mark.parametrize("output, answer, want", [
    ("So she sold 48 + 24 = 72 clips.", "72", True), ("The answer is $1,000.", "1000", True),
    ("72 then 73", "72", False), ("It is -5.", "-5", True), ("about 3.50", "3.5", True), ("no idea", "7", False),
    ("1,2,3", "3", True),
])
def test_last_number(output, answer, want):
    assert last_number(output, answer) is want


@pytest.mark.parametrize("output, answer, want", [
    ("Yes, it is.", True, True), ("No.", False, True), ("I am not sure.", False, False),
    ("Nothing to say, yes", True, True), ("Not at all. No.", False, True), ("nope", False, False),
    ("YES", "Yes", True), ("no, well, yes", True, False), ("Norway? yes", True, True),
])
def test_yes_no_reads_the_first_yes_no_word(output, answer, want):
    assert yes_no(output, answer) is want


def test_not_sure_is_not_no():
    assert first_yes_no("I'm not sure") is None and first_yes_no("Not now, no") is False


OPTIONS = ["A)21", "B)21.5", "C)42", "D)7", "E)none"]


@pytest.mark.parametrize("output, want", [
    ("(C)", True), ("C) 42", True), ("The answer is C.", True), ("C", True), ("The answer is (B)", False),
    ("So the result is 42.", True), ("It is 21.5", False), ("21", False), ("Either 42 or 7", False),
    ("A", False),
])
def test_option(output, want):
    assert option(output, "C", options=OPTIONS) is want


def test_sentiment_needs_the_gold_word_alone():
    assert sentiment("Positive", "Positive") and sentiment("It is negative.", "Negative")
    assert not sentiment("Positive or negative?", "Positive") and not sentiment("Great film", "Positive")


def test_score_dispatch_and_unknown_scorer():
    assert scoring.score("option", "(A)", {"answer": "A", "options": OPTIONS})
    with pytest.raises(ValueError, match="scorer='exact'"):
        scoring.score("exact", "x", {"answer": "x"})
    with pytest.raises(ValueError, match="Yes/No answer 'maybe'"):
        yes_no("yes", "maybe")


def test_distinct_2():
    assert distinct_n([[1, 2, 3], [1, 2, 4]]) == pytest.approx(3 / 4)
    assert distinct_n(["a b a b".split()]) == pytest.approx(2 / 3)
    assert distinct_n([[1], []]) is None


def test_passkey_format_budget_and_position():
    count = lambda s: len(s.split())
    items = tasks.passkey(5, max_tokens=128, digits=6, seed=1, count_tokens=count)
    keys = [it["answer"] for it in items]
    assert all(len(k) == 6 and k.isdigit() and k[0] != "0" for k in keys) and len(set(keys)) == 5
    for it in items:
        p, key = it["prompt"], it["answer"]
        assert p.startswith(tasks.PASSKEY_INSTRUCTION) and p.endswith("What is the pass key? The pass key is")
        assert f"The pass key is {key}. Remember it. {key} is the pass key." in p
        assert count(p) <= 128
        longer = tasks.passkey_prompt(key, it["filler"] + 1, round(it["position"] * (it["filler"] + 1)))
        assert count(longer) > 128, "the filler fills the budget"
    start = tasks.passkey(1, max_tokens=256, digits=12, position=0.0, count_tokens=count)[0]
    end = tasks.passkey(1, max_tokens=256, digits=12, position=1.0, count_tokens=count)[0]
    assert start["prompt"].startswith(tasks.PASSKEY_INSTRUCTION + " The pass key is ")
    assert end["prompt"].endswith("is the pass key. What is the pass key? The pass key is") and end["filler"] > 5
    assert tasks.passkey(3, seed=4) == tasks.passkey(3, seed=4) != tasks.passkey(3, seed=5)
    with pytest.raises(ValueError, match="max_tokens=10"):
        tasks.passkey(1, max_tokens=10)


def test_shipped_facts_are_balanced_in_every_category():
    items = tasks.facts()
    assert len(items) >= 300
    by_cat = Counter((it["category"], it["answer"]) for it in items)
    cats = {c for c, _ in by_cat}
    assert len(cats) >= 5 and all(by_cat[c, True] == by_cat[c, False] for c in cats)
    assert len({it["prompt"] for it in items}) == len(items)
    assert items[0]["prompt"].startswith("Question: ") and items[0]["kind"] == "parametric"
    sports = tasks.facts(category="sports", chat=True)
    assert all(it["category"] == "Sports" and it["prompt"].endswith("Answer Yes or No.") for it in sports)
    with pytest.raises(ValueError, match="category='Celebrity'"):
        tasks.facts(category="Celebrity")


def test_capitals_conflict_and_balanced_sampling():
    caps = tasks.capitals()
    assert 50 <= len(caps) <= 100 and {"prompt": "The capital of France is", "answer": ["Paris"],
                                       "kind": "parametric", "country": "France"} in caps
    conf = tasks.conflict(seed=0)
    for it in conf:
        assert it["prompt"].startswith(f"{it['context_answer']} is the capital of {it['country']}. ")
        assert it["context_answer"] not in it["answer"]
    t = tasks.build("facts", n=20, seed=3)
    assert len(t.items) == 20 and sum(it["answer"] for it in t.items) == 10 and t.scorer == "yes_no"
    assert t.items == tasks.build("facts", n=20, seed=3).items
    p = tasks.build("passkey", n=2, digits=12, max_tokens=256)
    assert p.max_new_tokens == 28 and p.scorer == "contains" and p.items[0]["task"] == "passkey"


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_loaders_read_the_public_formats(tmp_path):
    g = tasks.build("gsm8k", task_file=_write(tmp_path / "g.jsonl", [
        {"question": "Natalia sold 48 clips and half as many more. How many?", "answer": "48/2 = 24\n#### 1,072"}]))
    assert g.items[0]["answer"] == "1072" and g.scorer == "answer_number" and g.items[0]["kind"] == "contextual"
    a = tasks.build("aqua", task_file=_write(tmp_path / "a.jsonl", [
        {"question": "2+2?", "options": ["A)3", "B)4"], "rationale": "", "correct": "B"}]))
    assert a.items[0]["answer"] == "B" and "A)3 B)4" in a.items[0]["prompt"]
    assert scoring.score(a.scorer, "B) 4", a.items[0])
    (tmp_path / "imdb.csv").write_text('text,label\n"A fine, moving film",1\nDull,0\n')
    i = tasks.build("imdb", task_file=tmp_path / "imdb.csv")
    assert [it["answer"] for it in i.items] == ["Positive", "Negative"]
    assert "A fine, moving film" in i.items[0]["prompt"]
    (tmp_path / "cities.csv").write_text("statement,label,city,country,correct_country\n"
                                         "The city of Kyoto is in Japan.,1,Kyoto,Japan,Japan\n"
                                         "The city of Lyon is in Peru.,0,Lyon,Peru,France\n")
    c = tasks.build("cities", task_file=tmp_path / "cities.csv", chat=True)
    assert c.items[1]["prompt"] == "Is the city of Lyon in Peru? Answer Yes or No." and c.items[1]["answer"] is False
    f = tmp_path / "facts.json"
    f.write_text(json.dumps([{"question": "Is water wet?", "answer": True, "category": "Science"}]))
    assert tasks.build("facts", task_file=f).items[0]["answer"] is True
    j = tasks.build("jsonl", task_file=_write(tmp_path / "j.jsonl", [{"prompt": "2+3=", "answer": "5",
                                                                          "kind": "parametric"}]),
                    scorer="last_number")
    assert j.items[0]["kind"] == "parametric" and j.scorer == "last_number"


@pytest.mark.parametrize("name, content, match", [
    ("gsm8k", '{"question": "q", "answer": "42"}', r"g\.jsonl:1: answer has no '#### <number>'"),
    ("gsm8k", '{"question": "q"}\n', r"g\.jsonl:1: missing key\(s\) answer"),
    ("aqua", '{"question": "q", "options": ["A)1"], "correct": "C"}', "correct='C'"),
    ("jsonl", '{"prompt": "p"}', r"g\.jsonl:1: missing key\(s\) answer \(found prompt\)"),
    ("jsonl", '\n{"prompt": "p", "answer": 1}\n{oops', r"g\.jsonl:3: not valid JSON"),
])
def test_bad_files_name_the_line_and_key(tmp_path, name, content, match):
    (tmp_path / "g.jsonl").write_text(content)
    with pytest.raises(ValueError, match=match):
        tasks.build(name, task_file=tmp_path / "g.jsonl")


def test_task_errors():
    with pytest.raises(ValueError, match="task='mmlu'"):
        tasks.build("mmlu")
    with pytest.raises(ValueError, match="--task-file"):
        tasks.build("gsm8k")


def test_package_data_is_declared():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["probes"]
    files = [p.relative_to(ROOT / "probes").as_posix() for p in (ROOT / "probes" / "data").iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, pat) for pat in data) for f in files)


def test_answer_perplexity_matches_a_direct_forward():
    cfg = ModelConfig(vocab_size=50, d_model=32, num_layers=1, num_heads=2, max_seq_len=64, init_std=0.3)
    params = random_params(cfg, seed=0, std=0.3)
    prompts, answers = [[3, 4, 5, 6], [7, 8]], [[9, 10, 11], []]
    got = scoring.answer_perplexity(params, cfg, prompts, answers)
    logp = jax.nn.log_softmax(jax.jit(forward, static_argnums=2)(params, np.array([[3, 4, 5, 6, 9, 10, 11]]), cfg)
                              .logits[0])
    want = np.exp(-np.mean([logp[3, 9], logp[4, 10], logp[5, 11]]))
    assert got[0] == pytest.approx(float(want), rel=1e-5) and got[1] is None

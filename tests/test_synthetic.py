"""The synthetic corpus: deterministic, well-formed, its cues unique, its items answerable the way
eval_items asks; a tiny model learns to copy its pass keys and recall its facts, and disrupting its
largest q/k dims tells the two apart."""
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimal_lm.config import ConfigError
from train import load_config, synthetic
from train.config import DataConfig
from train.prepare import byte_tokenizer

CONFIGS = Path(__file__).parents[1] / "configs"
DATA = DataConfig()
TINY = load_config(CONFIGS / "tiny_rope.py").data
FACTS = synthetic.facts_table(DATA.num_facts, DATA.facts_seed)
DOCS = {name: [synthetic.decode(synthetic.sequence(d, "train", step, 0, 4000)) for step in range(40)]
        for name, d in (("default", DATA), ("tiny", TINY))}


def test_batches_are_a_pure_function_of_seed_and_step():
    a = synthetic.batch(DATA, "train", 7, 4, 65)
    assert a.shape == (4, 65) and a.dtype == np.int32
    assert np.array_equal(a, synthetic.batch(DATA, "train", 7, 4, 65))
    assert not np.array_equal(a, synthetic.batch(DATA, "train", 8, 4, 65))
    assert not np.array_equal(a, synthetic.batch(DataConfig(seed=1), "train", 7, 4, 65))
    assert not np.array_equal(a, synthetic.batch(DATA, "eval", 7, 4, 65))
    assert np.array_equal(a[2], synthetic.sequence(DATA, "train", 7, 2, 65))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), step=st.integers(0, 10**6), row=st.integers(0, 1000), length=st.integers(2, 600),
       digits=st.integers(1, 12), pairs=st.integers(0, 8))
def test_sequences_are_bos_then_printable_ascii(seed, step, row, length, digits, pairs):
    cfg = DataConfig(seed=seed, passkey_digits=digits, recall_pairs=pairs)
    ids = synthetic.sequence(cfg, "train", step, row, length)
    assert len(ids) == length and ids[0] == synthetic.BOS
    text = synthetic.decode(ids[1:])
    assert all(c == "\n" or " " <= c <= "~" for c in text)


def test_facts_table_is_fixed_and_distinct():
    assert synthetic.facts_table(64, 0) == FACTS and synthetic.facts_table(64, 1) != FACTS
    words = [f.entity for f in FACTS] + [f.answer for f in FACTS]
    assert len(set(words)) == len(words) == 128
    assert all(f.entity in f.question for f in FACTS)


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_training_documents_ask_what_they_stated(name):
    """Every question is answered consistently: pass keys and pairs by what the same document
    stated earlier, facts by the fixed table."""
    data = {"default": DATA, "tiny": TINY}[name]
    table = {f.question: f.answer for f in FACTS}
    counts = {"passkey": 0, "recall": 0, "fact": 0}
    for doc in DOCS[name]:
        lines = doc.split("\n")
        for i, line in enumerate(lines[:-1]):
            if m := re.fullmatch(r"What is the pass key\? #(\d+)\.", line):
                assert f"The pass key is #{m[1]}. Remember it. #{m[1]} is the pass key." in lines[:i]
                assert len(m[1]) == data.passkey_digits
                counts["passkey"] += 1
            elif m := re.fullmatch(r"Recall: ([A-Z])(\d\d)\.", line):
                assert any(s.startswith("Pairs: ") and m[1] + m[2] in s for s in lines[:i])
                counts["recall"] += 1
            elif m := re.fullmatch(r"Q: (.*\?) A: (\w+)\.", line):
                assert table[m[1]] == m[2]
                counts["fact"] += 1
            else:
                assert re.fullmatch(r"The pass key is .*|Pairs: .*|[A-Z][a-z ]+\.( [A-Z][a-z ]+\.)*", line), line
        assert sum(s.startswith("The pass key is") for s in lines) <= 1
    assert counts["passkey"] >= 60 and counts["fact"] >= 40, counts
    assert (counts["recall"] >= 20) == (data.recall_pairs > 0), counts


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_cues_are_unique_and_digits_do_not_repeat(name):
    """A copy needs only the last token: '#' and each pair's capital are followed by the same
    answer wherever they occur, and a document's digits repeat only after all ten were used."""
    for doc in DOCS[name]:
        for cue in "#" + synthetic.RECALL_KEYS:
            assert len(set(re.findall(re.escape(cue) + r"(\d+)", doc))) <= 1, (cue, doc)
        stated = re.findall(r"The pass key is #(\d+)\.|Pairs: ([^\n]*)\.", doc)
        digits = "".join(re.sub(r"\D", "", "".join(s)) for s in stated)
        for start in range(0, len(digits), 10):
            block = digits[start:start + 10]
            assert len(set(block)) == len(block), digits
        words = set(re.findall(r"[A-Za-z]+", re.sub(r"Pairs: [^\n]*|Recall: \w+", "", doc)))
        assert not any(w[0] in synthetic.RECALL_KEYS for w in words)


@pytest.mark.parametrize("name,kind", [("default", "contextual"), ("default", "parametric"),
                                       ("tiny", "contextual"), ("tiny", "parametric")])
def test_eval_items(name, kind):
    data = {"default": DATA, "tiny": TINY}[name]
    items = synthetic.eval_items(kind, 12, seed=3, data=data)
    assert items == synthetic.eval_items(kind, 12, seed=3, data=data)
    assert items != synthetic.eval_items(kind, 12, seed=4, data=data)
    table = {f.question: f.answer for f in FACTS}
    for it in items:
        assert it["kind"] == kind and 120 <= len(it["prompt"]) <= 200
        prompt, answer = it["prompt"], it["answer"]
        if it["task"] == "passkey":
            assert prompt.endswith(synthetic.PASSKEY_QUESTION) and len(answer) == data.passkey_digits
            assert f"The pass key is #{answer}. Remember it." in prompt and prompt.count("#") == 3
        elif it["task"] == "recall":
            key = re.search(r"Recall: ([A-Z])$", prompt)[1]
            assert re.search(rf"Pairs: .*{key}{answer}[,.]", prompt) and prompt.count(key) == 2
        else:
            question = re.search(r"Q: ([^\n]*\?) A: $", prompt)[1]
            assert table[question] == answer and answer not in prompt
            assert sum(f.entity in prompt for f in FACTS if f.question == question) == 1
    assert {it["task"] for it in items} == set(synthetic.tasks(kind, data))


def test_tasks_follow_the_data():
    assert synthetic.tasks("contextual", DATA) == ("passkey", "recall")
    assert synthetic.tasks("contextual", TINY) == ("passkey",)
    assert synthetic.tasks("parametric", TINY) == ("fact",)
    with pytest.raises(ValueError, match="kind='factual': expected one of contextual, parametric"):
        synthetic.eval_items("factual", 2, 0)
    with pytest.raises(ConfigError, match="data.recall_pairs=9: expected an integer from 0 to 8"):
        DataConfig(recall_pairs=9)


def test_eval_prompts_never_appear_in_training_rows():
    for data in (DATA, TINY):
        train = {synthetic.decode(r) for r in synthetic.batch(data, "train", 0, 64, 300)}
        for it in synthetic.eval_items("contextual", 20, seed=0, data=data):
            assert not any(it["prompt"] in t for t in train)


def test_byte_tokenizer_matches_the_training_ids():
    tok = byte_tokenizer()
    text = "The pass key is #48213.\nQ: Who founded Sapi? A: "
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


def test_items_cli_writes_both_kinds_for_the_disrupt_task_file(tmp_path, capsys):
    from probes import tasks
    from train.__main__ import main

    out = tmp_path / "items.jsonl"
    assert main(["items", "--config", str(CONFIGS / "tiny_rope.py"), "--n", "4", "--seed", "2", "--out", str(out)]) == 0
    assert "8 items (4 contextual, 4 parametric)" in capsys.readouterr().out
    expected = [it for kind in ("contextual", "parametric") for it in synthetic.eval_items(kind, 4, 2, TINY)]
    task = tasks.build("jsonl", task_file=out)
    assert [{k: it[k] for k in ("prompt", "answer", "kind")} for it in task.items] == \
        [{k: it[k] for k in ("prompt", "answer", "kind")} for it in expected]
    assert not [f for f in tmp_path.iterdir() if ".tmp" in f.name]
    with pytest.raises(SystemExit) as e:
        main(["items", "--config", str(CONFIGS / "gpt2_124m.py"), "--out", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "data.kind='shards'; items exist only for data.kind='synthetic'" in err
    with pytest.raises(SystemExit) as e:
        main(["items", "--config", str(CONFIGS / "tiny_rope.py"), "--n", "0", "--out", str(tmp_path / "x.jsonl")])
    assert e.value.code == 2 and "--n=0: expected a positive integer" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_rope_run(tmp_path_factory):
    """configs/tiny_rope.py trained as shipped (about a minute): (run config, run directory)."""
    from train import run

    cfg = load_config(CONFIGS / "tiny_rope.py", ["train.progress=false"])
    out = tmp_path_factory.mktemp("tiny_rope")
    result = run(cfg, out)
    assert result["eval_loss"] < 0.5 * synthetic.unigram_entropy(cfg.data, cfg.train.seq_len + 1)
    return cfg, out


@pytest.mark.slow
def test_tiny_rope_learns_to_copy_and_to_recall_facts(tiny_rope_run):
    """Greedy answers to held-out pass keys and facts are right at least 80% of the time, against
    chance (about 10% and 0%) at initialisation."""
    import jax

    from minimal_lm import generate, init_params
    from minimal_lm.run_dir import load_run

    cfg, out = tiny_rope_run

    def accuracy(params, kind):
        items = synthetic.eval_items(kind, 30, seed=11, data=cfg.data)
        outs = generate(params, cfg.model, [synthetic.encode(it["prompt"]).tolist() for it in items], 8)
        return np.mean([synthetic.decode(o).startswith(it["answer"]) for it, o in zip(items, outs)])

    assert accuracy(init_params(cfg.model, jax.random.key(0)), "contextual") <= 0.3
    params = load_run(out)[1]
    assert accuracy(params, "contextual") >= 0.8 and accuracy(params, "parametric") >= 0.8


@pytest.mark.slow
def test_disrupting_the_top_dims_of_tiny_rope_hurts_facts_not_pass_keys(tiny_rope_run):
    """The README's synthetic Table 1: mean-replacing the 3 largest-norm q/k dims per head in the prompt
    costs the memorised facts most of their accuracy and leaves the 1-digit pass keys; the 3 smallest
    change neither."""
    from minimal_lm import from_pretrained
    from probes.experiment import evaluate

    cfg, out = tiny_rope_run
    items = out / "items.jsonl"
    synthetic.write_items(items, 30, 0, cfg.data)
    model_cfg, params, tokenizer = from_pretrained(out)
    record, _ = evaluate(params, model_cfg, tokenizer, {
        "task": "jsonl", "task_file": str(items), "n": 60, "top_k": 3, "max_new_tokens": 8, "batch_size": 30,
        "perplexity": False}, progress=False)
    acc = {mode: {kind: r["accuracy"] for kind, r in res["by_kind"].items()} for mode, res in record["results"].items()}
    assert acc["none"]["contextual"] >= 0.8 and acc["none"]["parametric"] >= 0.8
    assert acc["massive"]["contextual"] >= acc["none"]["contextual"] - 0.1
    assert acc["massive"]["parametric"] <= acc["none"]["parametric"] - 0.4
    for kind in ("contextual", "parametric"):
        assert abs(acc["non_massive"][kind] - acc["none"][kind]) <= 0.1

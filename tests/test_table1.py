"""`python -m probes table1` end to end on a tiny checkpoint: layout, local data files, not-run and n/a
columns, Wilson intervals, the paper's numbers by model name, and resuming from saved cells."""
import json

import pytest

import minimal_lm
from hf_testlib import save, tiny_hf, tiny_tokenizer
from probes import experiment, table1
from probes.__main__ import main

BASE_ARGS = ["--n", "2", "--max-new-tokens", "4", "--batch-size", "2", "--chat", "off", "--quiet"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Named as the paper's Llama-3-8B-Instruct, so the paper's numbers are shown beside ours."""
    path = tmp_path_factory.mktemp("ckpt") / "Meta-Llama-3-8B-Instruct"
    tiny_tokenizer(save(tiny_hf("llama", seed=0, vocab_size=300), path))
    return str(path)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def data(tmp_path):
    """GSM8K and AQUA files of two items; IMDB reviews far longer than the model's 512 positions (n/a);
    no Cities file and no fact files (Celebrity not run, the others from the shipped questions)."""
    d = tmp_path / "data"
    d.mkdir()
    _jsonl(d / "gsm8k.jsonl", [{"question": "Tom has 5 apples and eats 2. How many are left?",
                                "answer": "5-2=3\n#### 3"}, {"question": "What is 2 plus 2?", "answer": "#### 4"}])
    _jsonl(d / "aqua.jsonl", [{"question": "What is 1+1?", "options": ["A)1", "B)2"], "correct": "B"},
                              {"question": "What is 3-1?", "options": ["A)2", "B)5"], "correct": "A"}])
    _jsonl(d / "imdb.jsonl", [{"text": "The sky is blue. " * 200, "label": 1}, {"text": "Bad. " * 300, "label": 0}])
    return d


def test_wilson_interval_matches_a_hand_computed_value():
    # 9/10, z = 1.96, z^2 = 3.8415: centre (0.9 + 3.8415/20) / (1 + 3.8415/10) = 1.09207 / 1.38415 = 0.78898,
    # half 1.96 * sqrt(0.9 * 0.1 / 10 + 3.8415/400) / 1.38415 = 1.96 * 0.13640 / 1.38415 = 0.19314: [0.5958, 0.9821].
    lo, hi = table1.wilson(9, 10)
    assert lo == pytest.approx(0.5958, abs=1e-4) and hi == pytest.approx(0.9821, abs=1e-4)
    assert table1.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert table1.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert table1.wilson(0, 0) is None


@pytest.mark.parametrize("name, paper", [("meta-llama/Meta-Llama-3-8B-Instruct", "Llama3-8B"),
                                         ("/models/llama3_8b", "Llama3-8B"), ("Llama-3.1-8B-Instruct", None),
                                         ("Qwen2.5-7B-Instruct", None), ("runs/tiny_rope", None)])
def test_paper_model_is_found_by_name(name, paper):
    assert table1.paper_model(name) == paper


def test_table_end_to_end(checkpoint, data, tmp_path, capsys):
    """Real generation on the GSM8K and AQUA files (prompts of one padded length: three compiled programs, one
    per mode); the other selected columns are n/a or not run, which needs no generation."""
    out = tmp_path / "out"
    columns = "gsm8k,aqua,passkey_128_6,passkey_1024_48,imdb,cities,celebrity"
    assert main(["table1", "--model", checkpoint, "--data", str(data), "--out", str(out), "--columns", columns,
                 *BASE_ARGS]) == 0
    rec = json.loads((out / "table1.json").read_text())
    assert [c["key"] for c in rec["columns"]] == ["gsm8k", "aqua", "passkey_128_6", "passkey_256_12",
                                                  "passkey_1024_48", "imdb", "cities", "sports", "art",
                                                  "technology", "celebrity"]
    assert rec["rows"] == ["none", "non_massive", "massive"] and rec["paper_model"] == "Llama3-8B"
    cells = rec["cells"]
    for key in ("gsm8k", "aqua"):
        for mode in rec["rows"]:
            c = cells[key][mode]
            assert c["status"] == "ok" and c["n"] == 2, (key, mode, c)
            assert c["ci95"] == pytest.approx(list(table1.wilson(c["correct"], 2)))
            saved = json.loads((out / "cells" / f"{key}.{mode}.json").read_text())
            assert sum(r["correct"] for r in saved["examples"]) == c["correct"] and len(saved["examples"]) == 2
            assert {r["mode"] for r in saved["examples"]} == {mode}
            assert saved["settings"]["mode"] == mode and saved["settings"]["n"] == 2
            assert saved["settings"]["data_sha256"] and saved["settings"]["scope"] == "prefill"
    # n/a, three ways: the tiny tokenizer needs 177 tokens for the bare passkey prompt (> 128); the 1024 budget
    # alone exceeds the model's 512 positions; the IMDB reviews are longer than 512 tokens (raised by evaluate)
    assert all(cells["passkey_128_6"][m]["status"] == "n/a" for m in rec["rows"])
    assert "already 177 tokens" in cells["passkey_128_6"]["massive"]["reason"]
    assert "max_seq_len=512" in cells["passkey_1024_48"]["none"]["reason"]
    assert cells["imdb"]["massive"]["status"] == "n/a" and "max_seq_len=512" in cells["imdb"]["massive"]["reason"]
    # not run: no Cities file, no Celebrity questions; the note names the flag, the file name and the format
    for key, flag, name in (("cities", "--cities", "cities.csv"), ("celebrity", "--celebrity", "celebrity_qa.json")):
        note = next(c["note"] for c in rec["columns"] if c["key"] == key)
        assert flag in note and name in note and "expected" in note
        assert cells[key]["none"]["status"] == "not run"
        assert not (out / "cells" / f"{key}.none.json").exists()
    assert cells["sports"]["none"]["status"] == "not run" and not (out / "cells" / "sports.none.json").exists()
    # the paper's numbers (shared/PAPER.md) beside ours, none invented
    assert cells["passkey_128_6"]["massive"]["paper"] == 9.0 and cells["gsm8k"]["none"]["paper"] == 76.9
    assert cells["sports"]["massive"]["paper"] == 74.5 and cells["aqua"]["none"]["paper"] is None
    md = (out / "table1.md").read_text()
    assert ("| mode | GSM8K | AQUA | passkey (128,6) | passkey (256,12) | passkey (1024,48) | IMDB | \\| | Cities | "
            "Sports | Art | Technology | Celebrity |") in md
    assert "| n/a · paper 9.0 |" in md and "not run" in md and "already 177 tokens" in md
    g = cells["gsm8k"]["none"]
    lo, hi = g["ci95"]
    assert f"| {100 * g['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] n=2 · paper 76.9 |" in md
    assert "Celebrity" in (out / "index.html").read_text()
    assert "wrote" in capsys.readouterr().out


@pytest.fixture
def counted(monkeypatch):
    """evaluate replaced by a fake that records its runs (and scores item i correct when i < n - 1), and
    from_pretrained counted."""
    calls, loads = [], []

    def fake_evaluate(params, cfg, tokenizer, run, *, progress=True):
        calls.append(run)
        n = run["n"]
        return ({"n": n, "results": {run["modes"][0]: {"correct": n - 1, "accuracy": (n - 1) / n}}, "settings": {}},
                [{"index": i, "correct": i < n - 1} for i in range(n)])

    real_load = minimal_lm.from_pretrained
    monkeypatch.setattr(experiment, "evaluate", fake_evaluate)
    monkeypatch.setattr(minimal_lm, "from_pretrained", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    return calls, loads


def test_resume_recomputes_only_missing_cells_and_refuses_other_settings(checkpoint, data, tmp_path, capsys, counted):
    calls, loads = counted
    out = tmp_path / "out"
    args = ["table1", "--model", checkpoint, "--data", str(data), "--out", str(out), *BASE_ARGS]
    assert main(args) == 0
    # 8 columns run (passkey 1024 is n/a before evaluate; no Cities, no Celebrity), 3 modes each
    assert len(calls) == 8 * 3 and len(loads) == 1
    first = json.loads((out / "table1.json").read_text())
    assert first["facts_per_category"] == {"Sports": 60, "Art": 60, "Technology": 60}
    assert {r["category"] for r in calls if r["task"] == "facts"} == {"Sports", "Arts", "Technology"}
    assert first["cells"]["gsm8k"]["massive"]["correct"] == 1 and first["cells"]["gsm8k"]["massive"]["n"] == 2

    (out / "cells" / "gsm8k.massive.json").unlink()
    calls.clear()
    assert main(args) == 0
    assert [(r["task"], r["modes"]) for r in calls] == [("gsm8k", ["massive"])]
    assert json.loads((out / "table1.json").read_text())["cells"] == first["cells"]

    calls.clear()
    assert main(args) == 0
    assert calls == [] and len(loads) == 2, "all cells saved: nothing computed, the model not even loaded"

    for change, message in ((["--n", "3"], "n=2 (now 3)"), (["--scope", "all"], "scope='prefill' (now 'all')")):
        with pytest.raises(SystemExit) as e:
            main(args + change)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "gsm8k.none.json" in err and "--fresh" in err
    assert calls == [] and len(loads) == 2

    assert main(args + ["--n", "3", "--fresh"]) == 0
    assert len(calls) == 8 * 3 and {r["n"] for r in calls} == {3}


def test_a_changed_data_file_is_refused(checkpoint, data, tmp_path, capsys, counted):
    out = tmp_path / "out"
    args = ["table1", "--model", checkpoint, "--data", str(data), "--out", str(out), "--columns", "aqua", *BASE_ARGS]
    assert main(args) == 0
    _jsonl(data / "aqua.jsonl", [{"question": "What is 2+2?", "options": ["A)4", "B)5"], "correct": "A"}])
    with pytest.raises(SystemExit):
        main(args)
    assert "aqua.none.json: data_sha256=" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--gsm8k", "/nonexistent/gsm8k.jsonl"], "--gsm8k /nonexistent/gsm8k.jsonl: no such file (expected JSONL, one "
                                              '{"question": ..., "answer": "... #### 42"}'),
    (["--data", "/nonexistent/dir"], "--data /nonexistent/dir: no such directory"),
    (["--gsm8k", "MALFORMED"], "g.jsonl:1: answer has no '#### <number>' line (--gsm8k expects JSONL"),
])
def test_missing_or_malformed_file_is_an_error_before_the_model_loads(checkpoint, tmp_path, capsys, monkeypatch,
                                                                      extra, message):
    monkeypatch.setattr(minimal_lm, "from_pretrained", lambda *a, **k: pytest.fail("the model was loaded"))
    malformed = _jsonl(tmp_path / "g.jsonl", [{"question": "q", "answer": "no marker"}])
    extra = [malformed if x == "MALFORMED" else x for x in extra]
    with pytest.raises(SystemExit) as e:
        main(["table1", "--model", checkpoint, "--out", str(tmp_path / "out"), *BASE_ARGS, *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists()

"""`python -m probes disrupt` end to end on a tiny HF checkpoint, and the prefill scope through generate."""
import json

import jax
import jax.numpy as jnp
import pytest

from hf_testlib import save, tiny_hf, tiny_tokenizer
from minimal_lm import forward, from_pretrained, generate, init_cache
from probes import prompts, tasks
from probes.__main__ import main
from probes.disrupt import disrupt
from probes.experiment import evaluate, load_config, modes_for, stop_at


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    tiny_tokenizer(save(tiny_hf("llama", seed=0, vocab_size=300), path))
    return str(path)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return from_pretrained(checkpoint)


def _greedy_by_hand(params, cfg, prompt, steps, prefill_hook):
    """Prefill with the hook, then decode one token at a time with no hook (the paper's scope)."""
    step = jax.jit(lambda p, t, pos, c, hook=None: forward(p, t, cfg, positions_BT=pos, cache=c, intervention=hook,
                                                           last_only=True))  # the hook is a traced pytree
    tokens = jnp.asarray([prompt], jnp.int32)
    out = step(params, tokens, jnp.arange(len(prompt))[None], init_cache(cfg, 1, len(prompt) + steps), prefill_hook)
    got = []
    for t in range(steps):
        got.append(int(jnp.argmax(out.logits[0, -1])))
        out = step(params, jnp.asarray([[got[-1]]]), jnp.asarray([[len(prompt) + t]]), out.cache)
    return got


TEXTS = ["The grass is green. The sky", "Here we go. There and", "The pass key is 12345.", "Is the city of",
         "The grass is green. The sky", "Here we go. There and"]
"""Prompts of the end-to-end test; generating them here with the same shapes and hooks as the command
(6 rows, 6 new tokens, top-k 2) lets the command reuse these compiled programs."""


def test_generate_with_prefill_scope_equals_prefill_only_by_hand(loaded):
    cfg, params, tok = loaded
    prompts = [tok.encode(t) for t in TEXTS]
    hook = disrupt(k=2)
    got = generate(params, cfg, prompts, 6, eos_ids=tok.eos_token_ids, intervention=hook, intervene_on=hook.scope)
    assert got[2] == _greedy_by_hand(params, cfg, prompts[2], 6, hook)[:len(got[2])]
    assert got != generate(params, cfg, prompts, 6, eos_ids=tok.eos_token_ids), "the disruption changes the output"


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_scores_every_mode_on_the_same_items(checkpoint, loaded, tmp_path, capsys):
    """Items whose answers are the intact model's own greedy outputs: mode none must score 100%, an
    impossible answer 0%; each kind is reported on its own."""
    cfg, params, tok = loaded
    texts = TEXTS
    outs = generate(params, cfg, [tok.encode(t) for t in texts], 6, eos_ids=tok.eos_token_ids)
    rows = [{"prompt": t, "answer": tok.decode([i for i in o if i not in tok.eos_token_ids]), "kind": "contextual"}
            for t, o in zip(texts[:4], outs)]
    rows += [{"prompt": t, "answer": "qqqqqqqqqq", "kind": "parametric"} for t in texts[4:]]
    items = _write_jsonl(tmp_path / "items.jsonl", rows)
    out = tmp_path / "out"
    assert main(["disrupt", "--model", checkpoint, "--task", "jsonl", "--task-file", items, "--max-new-tokens", "6",
                 "--batch-size", "6", "--top-k", "2", "--chat", "off", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "jsonl" and res["n"] == 6 and set(res["results"]) == {"none", "massive", "non_massive"}
    none = res["results"]["none"]
    assert none["by_kind"]["contextual"] == {"accuracy": 1.0, "correct": 4, "n": 4}
    assert none["by_kind"]["parametric"]["correct"] == 0 and none["accuracy"] == pytest.approx(4 / 6)
    assert res["settings"]["disruptions"]["massive"]["k"] == 2 and res["settings"]["scope"] == "prefill"
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == 18
    for mode, r in res["results"].items():
        mine = [e for e in examples if e["mode"] == mode]
        assert r["correct"] == sum(e["correct"] for e in mine)
        assert r["perplexity"] > 1 and 0 < r["diversity"] <= 1
        assert r["perplexity_given_prompt"] > 1 and 0 < r["distinct2_pooled_tokens"] <= 1
        assert all(e["perplexity"] is None or e["perplexity"] > 1 for e in mine)
    changed = [e["output"] != f["output"] for e in examples if e["mode"] == "massive"
               for f in examples if f["mode"] == "none" and f["index"] == e["index"]]
    assert any(changed), "the massive disruption changes some outputs"
    html = (out / "index.html").read_text()
    assert "Table 1" in html and "jsonl [contextual]" in html and (out / "accuracy.png").stat().st_size > 0
    assert "jsonl (n=6): none 66.7%" in capsys.readouterr().out


def test_config_builds_several_tasks_in_one_run(checkpoint, tmp_path):
    """Two tasks from one config file; a command-line option overrides the file. (Same shapes and hooks as
    the test above, so its compiled programs serve the capitals run.)"""
    config = tmp_path / "table1.json"
    config.write_text(json.dumps({"model": checkpoint, "n": 6, "batch_size": 6, "top_k": 2, "perplexity": False,
                                  "max_new_tokens": 3, "runs": [
                                      {"task": "capitals", "label": "capitals (6)", "modes": ["none", "massive"]},
                                      {"task": "conflict", "modes": ["none"]}]}))
    out = tmp_path / "out"
    assert main(["disrupt", "--config", str(config), "--out", str(out), "--max-new-tokens", "6",
                 "--stop", "\\nQ", "--stop", "\\n\\n"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in res["runs"]] == ["capitals (6)", "conflict"]
    assert [sorted(r["results"]) for r in res["runs"]] == [["massive", "none"], ["none"]]
    assert all(r["n"] == 6 and r["settings"]["max_new_tokens"] == 6 for r in res["runs"])
    assert all(r["settings"]["stop"] == ["\nQ", "\n\n"] and r["settings"]["chat"] for r in res["runs"])
    assert res["runs"][0]["settings"]["disruptions"]["massive"]["k"] == 2
    assert 0 <= res["runs"][1]["results"]["none"]["context_rate"] <= 1
    assert res["runs"][0]["results"]["none"]["perplexity"] is None
    rows = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 3 and {r["kind"] for r in rows} == {"parametric"}
    assert "capitals (6)" in (out / "index.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["--task", "gsm8k"], "--task-file"),
    (["--task", "facts", "--digits", "6"], "digits do not apply to task 'facts'"),
    (["--task", "passkey", "--modes", "none,random"], "mode 'random'"),
    (["--task", "passkey", "--max-tokens", "2000"], "max_seq_len=512"),
    (["--task", "facts", "--n", "0"], "n=0"),
    (["--task", "passkey", "--protocol", "authors", "--position", "0.5"], "position do not apply to protocol"),
    (["--task", "facts", "--protocol", "authors"], "protocol='authors' for task 'facts'"),
    (["--task", "facts", "--chat", "maybe"], "invalid choice: 'maybe'"),
])
def test_cli_bad_input_names_the_value(checkpoint, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["disrupt", "--model", checkpoint, "--out", str(tmp_path / "o"), "--n", "1", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_config_errors_name_the_run_and_key(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"runs": [{"task": "facts"}, {"task": "passkey", "digit": 6}]}))
    with pytest.raises(ValueError, match=r"runs\[1\]: unknown key\(s\) digit"):
        load_config(bad)
    bad.write_text("{\"runs\": []}")
    with pytest.raises(ValueError, match="non-empty list"):
        load_config(bad)

def test_modes_cover_disruptions_and_quantization():
    modes = modes_for("none,massive,non_massive,int4,int4_protect", lam=4.0, replace="zero")
    assert modes["none"] is None and modes["massive"].lam == 4.0 and modes["non_massive"].replace == "zero"
    assert modes["int4"].bits == 4 and not modes["int4"].protect_massive and modes["int4"].scope == "all"
    assert modes["int4_protect"].protect_massive and modes["int4_protect"].lam == 4.0
    with pytest.raises(ValueError, match="mode 'int4protect'"):
        modes_for("int4protect")


def test_outputs_are_cut_at_stop_strings(loaded, tmp_path):
    """A stop string taken from the middle of the intact greedy output: the scored output ends before it,
    the raw output is kept beside it, and the answer tokens are the prefix that decodes within the cut."""
    cfg, params, tok = loaded
    outs = generate(params, cfg, [tok.encode(t) for t in TEXTS], 6, eos_ids=tok.eos_token_ids)
    raws = [tok.decode([i for i in o if i not in tok.eos_token_ids]) for o in outs]
    j = max(range(len(raws)), key=lambda i: len(raws[i]))
    stop = raws[j][len(raws[j]) // 2:][:2]
    cut = raws[j][:raws[j].find(stop)]
    after = raws[j][raws[j].find(stop):]
    items = _write_jsonl(tmp_path / "items.jsonl", [{"prompt": t, "answer": after} for t in TEXTS])
    run = {"task": "jsonl", "task_file": items, "n": 6, "batch_size": 6, "max_new_tokens": 6, "modes": ["none"],
           "perplexity": False, "chat": "off", "stop": [stop]}
    record, rows = evaluate(params, cfg, tok, run, progress=False)
    assert rows[j]["output"] == cut and rows[j]["raw_output"] == raws[j] and not rows[j]["correct"]
    assert record["settings"]["stop"] == [stop]
    kept = evaluate(params, cfg, tok, {**run, "stop": []}, progress=False)[1]
    assert kept[j]["output"] == raws[j] and kept[j]["correct"] and "raw_output" not in kept[j]
    ids = tok.encode("The answer is 72.\n\nQuestion: Tom has", add_special_tokens=False)
    text, toks = stop_at(tok, ids, tok.decode(ids), ("\n\n",))
    assert text == "The answer is 72." and text.startswith(tok.decode(toks)) and len(toks) < len(ids)
    assert not text.startswith(tok.decode(ids[:len(toks) + 1])), "the longest prefix within the cut"


def test_generation_ends_at_stop_strings(loaded, monkeypatch):
    """evaluate hands generate a stop test that fires once a row's text holds a stop string (so a base
    model stops generating there, not only has its output cut), and none when the task has no stop."""
    import probes.experiment as ex

    cfg, params, tok = loaded
    tests = []
    real = ex.generate
    monkeypatch.setattr(ex, "generate", lambda *a, stop=None, **k: tests.append(stop) or real(*a, stop=stop, **k))
    run = {"task": "facts", "n": 2, "batch_size": 2, "modes": ["none"], "perplexity": False, "chat": "off"}
    record, _ = evaluate(params, cfg, tok, {**run, "stop": ["\nQ"]}, progress=False)
    stop = tests[-1]
    assert stop(tok.encode("Paris is big", add_special_tokens=False)) is False
    assert stop(tok.encode("Paris\nQuestion", add_special_tokens=False)) is True
    assert stop(tok.encode("Paris\nQuestion", add_special_tokens=False) + list(tok.eos_token_ids)) is True
    evaluate(params, cfg, tok, {**run, "stop": []}, progress=False)
    assert tests[-1] is None


def test_chat_auto_records_the_system_prompts_and_fits_the_authors_lengths(loaded):
    """The tiny checkpoint has a chat template: auto turns it on, the authors' system prompt is rendered as a
    system turn and recorded; the authors' 2000-token passkey budget is cut to what max_seq_len leaves."""
    cfg, params, tok = loaded
    run = {"task": "facts", "category": "Sports", "n": 6, "batch_size": 6, "max_new_tokens": 6, "modes": ["none"],
           "perplexity": False}
    settings = evaluate(params, cfg, tok, run, progress=False)[0]["settings"]
    assert settings["chat"] is True and settings["chat_requested"] == "auto" and settings["system_turn"] is True
    assert settings["system_prompts"] == ["You are a helpful sports expert who can help me. Answer ''Yes'' or ''No''."]
    assert settings["first_prompt"].startswith("<s><|system|>You are a helpful sports expert")
    assert settings["stop"] == []
    off = evaluate(params, cfg, tok, {**run, "chat": "off"}, progress=False)[0]["settings"]
    assert off["chat"] is False and off["system_prompts"] == [] and off["stop"] == ["\n"]
    passkey = evaluate(params, cfg, tok, {"task": "passkey", "n": 1, "max_tokens": 480, "digits": 6, "batch_size": 1,
                                          "modes": ["none"], "perplexity": False}, progress=False)
    prompt_len = len(prompts.encode([{"prompt": passkey[1][0]["prompt"], "system": tasks.SYSTEM["passkey"]}], tok,
                                    chat=True)[0])
    assert prompt_len <= 480 and passkey[0]["settings"]["max_new_tokens"] == cfg.max_seq_len - prompt_len


def test_quantization_arms_run_as_modes(loaded):
    """The claim-6 arms as modes: the weight-only arm quantizes the params the mode generates and is scored
    with, so the paper's answer-alone perplexity of its answers differs from the intact model's."""
    cfg, params, tok = loaded
    run = {"task": "facts", "category": "Sports", "n": 4, "batch_size": 4, "max_new_tokens": 6,
           "modes": ["none", "kv4_clip", "kv4_clip_protect", "w2_rtn", "w2_awq_random"], "chat": "off"}
    record, rows = evaluate(params, cfg, tok, run, progress=False)
    assert set(record["results"]) == set(run["modes"])
    assert record["settings"]["disruptions"]["kv4_clip_protect"]["keep"] == "massive"
    assert "random non-salient input channel" in record["settings"]["described"]["w2_awq_random"]
    same = lambda m: [(r["output"], r["perplexity"]) for r in rows if r["mode"] == m]
    assert same("w2_rtn") != same("none")

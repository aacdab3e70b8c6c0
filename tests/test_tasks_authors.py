"""Issue 14 (items 2-7, 10): scorers that read the stated answer, stop strings, output lengths, chat
templates with the authors' system prompts, and the authors' passkey and knowledge-conflict generators."""
import json

import numpy as np
import pytest

from hf_testlib import CHAT_TEMPLATE, tiny_tokenizer
from minimal_lm.tokenizer import Tokenizer
from probes import prompts, scoring, tasks
from probes.scoring import answer_number, first_yes_no, last_number, option, option_text, parse_number, yes_no

OPTIONS = ["A)21", "B)21.5", "C)42", "D)7", "E)none"]


@pytest.mark.parametrize("output", [
    "A train covers 42 km, so the answer is (C).", "Answer: C", "E) none... wait, the answer is (C)",
    "Option E is wrong; the correct option is C.", "The answer is **C**",
])
def test_aqua_reads_the_final_stated_choice(output):
    assert option(output, "C", options=OPTIONS)
    assert not option(output, "E", options=OPTIONS) and not option(output, "A", options=OPTIONS)


def test_aqua_authors_rule_is_the_option_text():
    assert option_text("so it covers 42 km", "C", options=OPTIONS)
    assert not option_text("The answer is (C).", "C", options=OPTIONS), "the authors' rule reads no letter"
    assert scoring.score("option_text", "21.5 it is", {"answer": "B", "options": OPTIONS})


INVENTED = "48 + 24 = 72. The answer is 72.\nQuestion: Tom has 5 apples and eats 2. How many are left? The answer is 3"


def test_gsm8k_reads_the_first_answer_and_stops_at_the_next_question(tmp_path):
    assert answer_number(INVENTED, "72") and not answer_number(INVENTED, "3")
    assert not last_number(INVENTED, "72"), "the authors' last-number rule reads the invented question"
    assert answer_number("She sold 48 + 24 = 72 clips.", "72") and answer_number("#### 1,072", "1072")
    assert answer_number("so the answer is: $18.50 in all, 3 days", "18.5")
    g = _write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "#### 72"}])
    task = tasks.build("gsm8k", task_file=g)
    assert task.scorer == "answer_number" and task.stop == ("\nQuestion:", "\n\n")
    cut = tasks.cut_at_stop(INVENTED, task.stop)
    assert cut == "48 + 24 = 72. The answer is 72." and last_number(cut, "72")
    assert tasks.cut_at_stop("no stop here", task.stop) == "no stop here"
    assert tasks.build("gsm8k", task_file=g, chat=True).stop == ()


def test_yes_no_skips_the_echoed_choice_and_ranges_are_not_signs():
    assert yes_no("Answer (Yes or No): No", False) and not yes_no("Yes or No? ... No", True)
    assert first_yes_no("yes/no: yes") is True and first_yes_no("Yes or No?") is None
    assert parse_number("6-7") == 7 and last_number("about 6-7 apples", "7") and not last_number("6-7", "-7")
    assert parse_number("It is -5.") == -5 and parse_number("x=-2") == -2


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_output_lengths_are_the_authors_with_a_chat_template(tmp_path):
    (tmp_path / "imdb.csv").write_text("text,label\nA fine film,1\n")
    want = {"facts": 300, "imdb": 2000, "gsm8k": 500, "aqua": 1200, "cities": 300, "passkey": 2000}
    files = {"imdb": tmp_path / "imdb.csv", "cities": _cities(tmp_path),
             "gsm8k": _write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "#### 7"}]),
             "aqua": _write_jsonl(tmp_path / "a.jsonl", [{"question": "q?", "options": OPTIONS, "correct": "C"}])}
    for name, n in want.items():
        assert tasks.build(name, task_file=files.get(name), n=1, chat=True).max_new_tokens == n, name
    assert tasks.build("imdb", task_file=files["imdb"]).max_new_tokens == 4
    assert tasks.build("passkey", n=1, digits=12, max_tokens=256).max_new_tokens == 28
    assert tasks.build("facts", n=1, chat=True, max_new_tokens=9).max_new_tokens == 9


def _cities(tmp_path):
    path = tmp_path / "cities.csv"
    path.write_text("statement,label,city,country,correct_country\n"
                    "The city of Kyoto is in Japan.,1,Kyoto,Japan,Japan\n"
                    "The city of Lyon is in Peru.,0,Lyon,Peru,France\n"
                    "The city of Austin is in the United States.,1,Austin,the United States,the United States\n")
    return path


def test_items_carry_the_authors_system_prompts(tmp_path):
    sports = tasks.build("facts", category="Sports", n=2, chat=True).items
    assert {it["system"] for it in sports} == {"You are a helpful sports expert who can help me. "
                                               "Answer ''Yes'' or ''No''."}
    science = tasks.build("facts", category="Science", n=1).items[0]
    assert science["system"] == "You are a helpful expert who can help me. Answer ''Yes'' or ''No''."
    city = tasks.build("cities", task_file=_cities(tmp_path), n=1).items[0]
    assert "geography expert" in city["system"]
    assert all("system" not in it for it in tasks.build("facts", n=2, system="").items)
    assert {it["system"] for it in tasks.build("capitals", n=2, system="Be brief.").items} == {"Be brief."}
    a = tasks.build("aqua", chat=True, task_file=_write_jsonl(tmp_path / "a.jsonl", [
        {"question": "2+2?", "options": ["A)3", "B)4"], "correct": "B"}])).items[0]
    assert a["prompt"] == "2+2? Choose the correct answer from the options: A)3 B)4"
    assert a["system"].startswith("You are a helpful math expert") and "Do not show other" in a["system"]
    authors_facts = tmp_path / "sports_qa.json"
    authors_facts.write_text(json.dumps({"version": "1.0", "data": [
        {"question": "Is soccer popular?", "answer": True, "category": "sports"}]}))
    assert tasks.facts(authors_facts)[0]["answer"] is True


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.from_dir(tiny_tokenizer(tmp_path_factory.mktemp("tok")))


def test_chat_auto_and_system_turns(tok):
    assert prompts.resolve_chat("auto", tok) is True and prompts.resolve_chat("off", tok) is False
    bare = Tokenizer(tok.backend, {**tok.config, "chat_template": None})
    assert prompts.resolve_chat("auto", bare) is False
    with pytest.raises(ValueError, match="chat=on: .* no chat template"):
        prompts.resolve_chat("on", bare)
    item = {"prompt": "Is the sky blue?", "system": "Answer Yes or No."}
    got = prompts.encode([item], tok, chat=True)[0]
    want = tok.encode(tok.apply_chat_template([{"role": "system", "content": "Answer Yes or No."},
                                               {"role": "user", "content": "Is the sky blue?"}]),
                      add_special_tokens=False)
    assert got == want and prompts.encode([item], tok)[0] == tok.encode("Is the sky blue?")
    no_system = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                 "{% endif %}" + CHAT_TEMPLATE)
    gemma_like = Tokenizer(tok.backend, {**tok.config, "chat_template": no_system})
    assert not prompts.takes_system(gemma_like) and prompts.takes_system(tok)
    merged = gemma_like.apply_chat_template([{"role": "user", "content": "Answer Yes or No.\n\nIs the sky blue?"}])
    assert prompts.encode([item], gemma_like, chat=True)[0] == gemma_like.encode(merged, add_special_tokens=False)


def test_authors_passkey_generator():
    count = lambda s: len(s.split())
    items = tasks.passkey_authors(20, max_tokens=128, digits=6, count_tokens=count)
    prefix, filler = count(tasks.AUTHORS_PASSKEY_INSTRUCTION), count(tasks.PASSKEY_FILLER)
    n_filler = (128 - count("The pass key is {KEY}. Remember it. {KEY} is the pass key.") - prefix) // filler
    rng = np.random.RandomState(128 + 50)
    for it in items:
        key = str(rng.randint(10 ** 5, 10 ** 6 - 1))
        before = rng.randint((50 - prefix) // filler, (550 - prefix) // filler + 1)
        lines = it["prompt"].split("\n")
        assert it["answer"] == key and it["fillers_before"] == before
        assert lines[0] == tasks.AUTHORS_PASSKEY_INSTRUCTION and lines[1 + before] == tasks.PASSKEY_KEY.format(key=key)
        assert lines[1:1 + before] == [tasks.PASSKEY_FILLER] * before
        assert len(lines) == 2 + max(n_filler, before) and it["tokens"] == count(it["prompt"])
        assert not it["prompt"].rstrip().endswith("?"), "no trailing question, as their Llama-3 run"
    assert max(it["tokens"] for it in items) > 128, "their insertion range runs past the budget"
    long = tasks.passkey_authors(2, max_tokens=1024, digits=48, count_tokens=count)
    assert all(len(it["answer"]) == 48 and it["answer"][0] != "0" for it in long)
    asked = tasks.passkey_authors(1, question="What is the passkey?", count_tokens=count)[0]
    assert asked["prompt"].endswith(" What is the passkey?")
    built = tasks.build("passkey", protocol="authors", n=3, count_tokens=count)
    assert [it["answer"] for it in built.items] == [it["answer"] for it in items[:3]]
    with pytest.raises(ValueError, match="protocol='theirs'"):
        tasks.build("passkey", protocol="theirs")


def test_authors_knowledge_conflict(tmp_path):
    path = _cities(tmp_path)
    items = tasks.build("conflict", protocol="authors", task_file=path, chat=True)
    assert items.scorer == "yes_no" and [it["answer"] for it in items.items] == [True, False, True]
    first = items.items[0]
    assert first["prompt"] == ("You should Know the new geography knowledge: ShiJiaZhuang is a new city in The USA. "
                               "Is the city of Kyoto in Japan?")
    assert "geography expert" in first["system"] and "context_answer" not in first
    own = tasks.build("conflict", protocol="authors_city", task_file=path).items
    assert own[1]["prompt"].startswith("Question: You should Know the new geography knowledge: Lyon is a new city")
    assert [it["context_answer"] for it in own] == [False, False, True]
    with pytest.raises(ValueError, match="--task-file"):
        tasks.build("conflict", protocol="authors")
    assert tasks.build("conflict", n=2).scorer == "contains"

"""Tokenizer and chat templates agree with transformers' AutoTokenizer on the same files."""
import json
import os

import jinja2
import pytest
import transformers

from hf_testlib import tiny_tokenizer
from minimal_lm import Tokenizer

TEXTS = ["The pass key is 98765. Remember it!", "  Ünïcödé, tabs\tand\nnewlines  ", "x<pad>y</s> <s>z", ""]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is Paris in France?"},
            {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "And Rome?"}]
RICH_TEMPLATE = (
    "{%- set ns = namespace(turns=0) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] not in ['system', 'user', 'assistant'] -%}{{ raise_exception('bad role ' + m['role']) }}"
    "{%- endif -%}"
    "{%- if m['role'] == 'system' %}{{ bos_token }}[SYS]{{ m['content'] | tojson }}\n{% continue %}{% endif -%}"
    "{%- set ns.turns = ns.turns + 1 -%}"
    "{%- if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{%- else %}<|user|>{{ m['content'] }}\n{% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<|assistant|>{{ ns.turns }}{% endif -%}")


@pytest.fixture(scope="module", params=["config_template", "jinja_file", "add_bos_false"])
def pair(request, tmp_path_factory):
    kw = {"config_template": {}, "jinja_file": dict(chat_template_file=True),
          "add_bos_false": dict(add_bos_token=False)}[request.param]
    path = tiny_tokenizer(tmp_path_factory.mktemp(request.param), **kw)
    return Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(path), path


def test_encode_decode_match_transformers(pair):
    ours, ref, _ = pair
    for text in TEXTS:
        for special in (True, False):
            ids = ref(text, add_special_tokens=special)["input_ids"]
            assert ours.encode(text, add_special_tokens=special) == ids, (text, special)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert (ours.bos_token_id, ours.eos_token_ids, ours.pad_token_id) == (
        ref.bos_token_id, [ref.eos_token_id], ref.pad_token_id)
    assert ours.vocab_size == len(ref)


def test_chat_template_matches_transformers(pair):
    ours, ref, _ = pair
    for gen in (True, False):
        for msgs in (MESSAGES, MESSAGES[1:2]):
            assert ours.apply_chat_template(msgs, add_generation_prompt=gen) == ref.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=gen)


def test_rich_template_features_match_transformers(pair):
    """namespace, loop controls, tojson, raise_exception and {% generation %} render as in transformers."""
    ours, ref, _ = pair
    ours.chat_template = ref.chat_template = RICH_TEMPLATE
    for gen in (True, False):
        assert ours.apply_chat_template(MESSAGES, add_generation_prompt=gen) == ref.apply_chat_template(
            MESSAGES, tokenize=False, add_generation_prompt=gen)
    with pytest.raises(jinja2.exceptions.TemplateError, match="bad role tool"):
        ours.apply_chat_template([{"role": "tool", "content": "x"}])


def test_generation_config_adds_stop_tokens_and_save_round_trips(pair, tmp_path):
    ours, ref, path = pair
    eot = ours.encode("<|assistant|>", add_special_tokens=False)[0]
    json.dump({"eos_token_id": [ours.eos_token_ids[0], eot]}, open(tmp_path / "generation_config.json", "w"))
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer_config.json"),
                              generation_config=tmp_path / "generation_config.json")
    assert tok.eos_token_ids == [ref.eos_token_id, eot]
    ours.save(tmp_path / "saved")
    again = Tokenizer.from_dir(tmp_path / "saved")
    assert [again.encode(t) for t in TEXTS] == [ours.encode(t) for t in TEXTS]
    assert again.apply_chat_template(MESSAGES) == ours.apply_chat_template(MESSAGES)


@pytest.mark.parametrize("force", [False, True])
def test_clean_up_tokenization_spaces_matches_transformers(tmp_path, force):
    """transformers 5 ignores clean_up_tokenization_spaces for BPE unless forced by a second flag."""
    path = tiny_tokenizer(tmp_path)
    config = json.load(open(tmp_path / "tokenizer_config.json"))
    config.update(clean_up_tokenization_spaces=True,
                  clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output=force)
    json.dump(config, open(tmp_path / "tokenizer_config.json", "w"))
    ours, ref = Tokenizer.from_dir(path), transformers.AutoTokenizer.from_pretrained(path)
    ids = ours.encode("Yes . It is n't , is it ?")
    assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    assert (ours.decode(ids) == "Yes. It isn't, is it?") == force


def test_missing_template_and_bad_file(tmp_path):
    path = tiny_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer.from_file(os.path.join(path, "tokenizer.json")).apply_chat_template(MESSAGES)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: cannot load tokenizer"):
        Tokenizer.from_file(tmp_path / "broken.json")
    assert Tokenizer.from_dir(tmp_path / "nothing_here") is None

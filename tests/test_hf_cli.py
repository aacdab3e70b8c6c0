"""`python -m minimal_lm generate|logits|export` on a tiny checkpoint with its own tokenizer, checked
against transformers (its tokenizer and its model) on the same directory."""
import jax
import numpy as np
import pytest
import torch
import transformers

from hf_testlib import save, tiny_hf, tiny_tokenizer
from minimal_lm import from_pretrained
from minimal_lm.__main__ import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli")
    tiny_tokenizer(path)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = tiny_hf("llama", vocab_size=300, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id)
    return save(model, path), model, tok


def hf_continuation(model, tok, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


@pytest.mark.parametrize("chat", [False, True])
def test_generate_prints_hf_continuation(ckpt, capsys, chat):
    path, model, tok = ckpt
    prompt = "The pass key is"
    main(["generate", "--model", path, "--prompt", prompt, "--max-new-tokens", "12"] + ["--chat"] * chat)
    if chat:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                      add_generation_prompt=True, return_dict=False)
    else:
        ids = tok(prompt)["input_ids"]
    ref = hf_continuation(model, tok, list(ids), 12)
    assert len(ref) > 12, "the continuation should be a real text, not an immediate EOS"
    assert capsys.readouterr().out == ref + "\n"


def test_logits_match_hf(ckpt, tmp_path, capsys):
    path, model, tok = ckpt
    text = "The grass is green. The sky is blue. " * 8
    (tmp_path / "t.txt").write_text(text)
    main(["logits", "--model", path, "--text-file", str(tmp_path / "t.txt"), "--out", str(tmp_path / "l.npy"),
          "--ids-out", str(tmp_path / "ids")])
    assert f"{tmp_path / 'l.npy'}: logits of" in capsys.readouterr().err
    ids = tok(text)["input_ids"]
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), ids)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    ours = np.load(tmp_path / "l.npy")
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4


def test_export_copies_weights_and_tokenizer(ckpt, tmp_path):
    path, _, _ = ckpt
    main(["export", "--model", path, "--out", str(tmp_path / "out")])
    a, b = from_pretrained(path), from_pretrained(tmp_path / "out")
    assert a.config == b.config
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert b.tokenizer.encode("The sky") == a.tokenizer.encode("The sky")


def test_errors_exit_with_a_message(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"])
    assert e.value.code == 2 and "no such directory" in capsys.readouterr().err
    path, _, _ = ckpt
    (tmp_path / "long.txt").write_text("The sky is blue. " * 400)
    with pytest.raises(SystemExit) as e:
        main(["logits", "--model", path, "--text-file", str(tmp_path / "long.txt"), "--out", str(tmp_path / "l.npy")])
    assert e.value.code == 2 and "exceed max_seq_len=512" in capsys.readouterr().err

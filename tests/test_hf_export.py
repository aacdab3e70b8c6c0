"""Export round trip: our random RoPE model -> HF directory -> transformers gives the same logits,
and our own loader reads back the same params."""
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from hf_testlib import random_params
from minimal_lm import ConfigError, Llama3Scaling, ModelConfig, forward, from_pretrained, init_params, save_hf

CASES = {
    "llama_gqa_llama3_untied": dict(num_kv_heads=2, tie_embeddings=False, rope_theta=500.0,
                                    rope_scaling=Llama3Scaling(8.0, 1.0, 4.0, 32)),
    "qwen2_bias_tied": dict(num_kv_heads=1, qkv_bias=True, tie_embeddings=True, head_dim=24),
}


def random_model(**kw):
    cfg = ModelConfig(vocab_size=96, d_model=48, num_layers=2, num_heads=4, max_seq_len=256, init_std=0.15,
                      norm_eps=1e-5, **kw)
    return cfg, random_params(cfg)


@pytest.mark.parametrize("name", list(CASES))
def test_export_round_trip(name, tmp_path):
    cfg, params = random_model(**CASES[name])
    save_hf(tmp_path, cfg, params)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    assert type(hf).__name__ == ("Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM")
    tokens_BT = np.random.RandomState(0).randint(0, cfg.vocab_size, (2, 128))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens_BT)).logits.numpy()
    ours = np.asarray(forward(params, jnp.asarray(tokens_BT), cfg).logits)
    assert np.abs(ref).std() > 0.3
    assert np.abs(ours - ref).max() <= 1e-4

    back = from_pretrained(tmp_path)
    default_head = cfg.dim_per_head * cfg.num_heads == cfg.d_model  # read back as head_dim=None, the default
    assert back.config == cfg.replace(mlp_dim=cfg.hidden_dim, head_dim=None if default_head else cfg.dim_per_head,
                                      num_kv_heads=cfg.kv_heads)
    jax.tree.map(np.testing.assert_array_equal, back.params, params)


def test_export_bfloat16(tmp_path):
    cfg, params = random_model(num_kv_heads=2)
    save_hf(tmp_path, cfg, params, dtype="bfloat16")
    back = from_pretrained(tmp_path)
    assert back.config.param_dtype == "bfloat16"
    cast = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16), params)
    jax.tree.map(np.testing.assert_array_equal, back.params, cast)


@pytest.mark.parametrize("kw, match", [(dict(position="alibi"), "position='alibi' has no Hugging Face"),
                                       (dict(position="learned"), "position='learned' has no Hugging Face"),
                                       (dict(rope_fraction=0.5), "rope_fraction=0.5")])
def test_export_refuses_what_hf_llama_cannot_express(kw, match, tmp_path):
    cfg = ModelConfig(vocab_size=32, d_model=16, num_layers=1, num_heads=2, **kw)
    with pytest.raises(ConfigError, match=match):
        save_hf(tmp_path, cfg, jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0)))


def test_run_directory_exports_through_the_cli(tmp_path):
    """A run directory of ours (config.json + orbax checkpoint + tokenizer.json) opens with
    from_pretrained and exports with `python -m minimal_lm export` to a directory transformers loads."""
    import json

    import orbax.checkpoint as ocp

    from hf_testlib import tiny_tokenizer
    from minimal_lm import Tokenizer
    from minimal_lm.__main__ import main
    from minimal_lm.run_dir import PARAMS
    from train.checkpoint import checkpoint_manager

    run = tmp_path / "run"
    cfg = random_model(num_kv_heads=2, tie_embeddings=False)[0].replace(vocab_size=300)  # the tokenizer's
    params = random_params(cfg, seed=1)
    tiny_tokenizer(tmp_path / "tok")
    run.mkdir()
    Tokenizer.from_dir(tmp_path / "tok").backend.save(str(run / "tokenizer.json"))
    (run / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "train": {}, "data": {}}))
    with checkpoint_manager(run, read_only=False) as mngr:
        mngr.save(7, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params)}))
        mngr.wait_until_finished()
    pre = from_pretrained(run)
    assert pre.config == cfg and pre.tokenizer is not None
    jax.tree.map(np.testing.assert_array_equal, pre.params, params)

    main(["export", "--model", str(run), "--out", str(tmp_path / "hf")])
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("The sky is blue. " * 10)["input_ids"]
    assert ids == pre.tokenizer.encode("The sky is blue. " * 10)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    assert np.abs(np.asarray(forward(params, jnp.asarray([ids]), cfg).logits) - ref).max() <= 1e-4

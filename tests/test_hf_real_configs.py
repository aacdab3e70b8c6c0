"""config.json files of real checkpoints, as published and as transformers 5.x rewrites them
(tests/data/hf_configs*, sources in tests/data/hf_configs/SOURCES.md), load into the function that
transformers computes: the fields that change the math are checked here by value."""
import json
import math
import warnings
from pathlib import Path

import pytest

from minimal_lm import ConfigError
from minimal_lm.hf_config import IgnoredConfigKeys, from_hf_config

DATA = Path(__file__).parent / "data"
NAMES = sorted(p.stem for p in (DATA / "hf_configs").glob("*.json"))
R = dict(position="rope", norm="rms", mlp="glu", activation="silu")
EXPECTED = {
    "SmolLM2-135M": dict(R, d_model=576, num_layers=30, num_heads=9, kv_heads=3, dim_per_head=64, rope_theta=1e5,
                         tie_embeddings=True, layer_windows=None),
    "SmolLM2-135M-Instruct": dict(R, d_model=576, num_layers=30, kv_heads=3, rope_theta=1e5, tie_embeddings=True),
    "Meta-Llama-3-8B-Instruct": dict(R, d_model=4096, num_layers=32, num_heads=32, kv_heads=8, rope_theta=5e5,
                                     rope_scaling=None, tie_embeddings=False),
    "Llama-3.1-8B": dict(R, d_model=4096, kv_heads=8, rope_theta=5e5, max_seq_len=131072),
    "Llama-3.2-1B": dict(R, d_model=2048, num_layers=16, dim_per_head=64, tie_embeddings=True),
    "Mistral-7B-v0.1": dict(R, d_model=4096, kv_heads=8, layer_windows=(4096,) * 32, qkv_bias=False),
    "Mistral-7B-v0.3": dict(R, vocab_size=32768, layer_windows=None, rope_theta=1e6),
    "Qwen2.5-7B-Instruct": dict(R, d_model=3584, num_heads=28, kv_heads=4, qkv_bias=True, out_bias=False,
                                layer_windows=None),
    "Qwen3-0.6B": dict(R, d_model=1024, num_layers=28, num_heads=16, kv_heads=8, dim_per_head=128, qk_norm=True,
                       qkv_bias=False, tie_embeddings=True, layer_windows=None),
    "gemma-2-9b-it": dict(position="rope", norm="rms", norm_offset=1.0, activation="gelu_tanh", sandwich_norms=True,
                          d_model=3584, num_layers=42, dim_per_head=256, embed_scale=math.sqrt(3584),
                          attn_scale=256 ** -0.5, attn_softcap=50.0, final_softcap=30.0,
                          layer_windows=(4096, 0) * 21, tie_embeddings=True),
    "gpt2": dict(position="learned", norm="layer", mlp="mlp", activation="gelu_tanh", d_model=768, num_layers=12,
                 num_heads=12, hidden_dim=3072, max_seq_len=1024, qkv_bias=True, out_bias=True, mlp_bias=True,
                 tie_embeddings=True, position_offset=0),
    "opt-125m": dict(position="learned", position_offset=2, norm="layer", mlp="mlp", activation="relu",
                     d_model=768, hidden_dim=3072, max_seq_len=2048, qkv_bias=True, tie_embeddings=True),
    "gpt-neo-125m": dict(position="learned", norm="layer", mlp="mlp", activation="gelu_tanh", d_model=768,
                         attn_scale=1.0, qkv_bias=False, out_bias=True, layer_windows=(0, 256) * 6),
    "pythia-160m": dict(position="rope", norm="layer", mlp="mlp", activation="gelu", d_model=768, num_layers=12,
                        rope_fraction=0.25, rotary_dim=16, parallel_residual=True, qkv_bias=True,
                        tie_embeddings=False, vocab_size=50304),
}


def load(version, name):
    return json.loads((DATA / version / f"{name}.json").read_text())


def test_every_checkpoint_named_by_the_issue_is_here():
    assert set(NAMES) == set(EXPECTED)
    assert {p.stem for p in (DATA / "hf_configs_v5").glob("*.json")} == set(EXPECTED)


@pytest.mark.parametrize("version", ["hf_configs", "hf_configs_v5"])
@pytest.mark.parametrize("name", NAMES)
def test_real_config_loads_with_the_math_of_transformers(name, version):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = from_hf_config(load(version, name), f"{name}/config.json")
    ours = [w for w in caught if issubclass(w.category, IgnoredConfigKeys)]
    assert len(ours) <= 1, "ignored keys are named in one warning"
    assert not [w for w in caught if w not in ours], [str(w.message) for w in caught]
    for field, value in EXPECTED[name].items():
        assert getattr(cfg, field) == value, f"{name} ({version}): {field}={getattr(cfg, field)!r}, expected {value!r}"


@pytest.mark.parametrize("name", NAMES)
def test_v5_rewrite_reads_the_same_function(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IgnoredConfigKeys)
        assert from_hf_config(load("hf_configs", name)) == from_hf_config(load("hf_configs_v5", name))


def test_published_metadata_keys_are_ignored_by_name_and_refused_only_in_strict_mode():
    hf = load("hf_configs", "SmolLM2-135M-Instruct")
    with pytest.warns(IgnoredConfigKeys, match=r"is_llama_config.*rope_interleaved|is_llama_config.*transformers\.js"):
        from_hf_config(hf, "SmolLM2-135M-Instruct/config.json")
    with pytest.raises(ConfigError, match=r"SmolLM2-135M-Instruct/config.json: key\(s\) .*is_llama_config"):
        from_hf_config(hf, "SmolLM2-135M-Instruct/config.json", strict=True)


@pytest.mark.parametrize("name, change, match", [
    ("SmolLM2-135M-Instruct", dict(rope_interleaved=True), r"rope_interleaved=True is not supported"),
    ("Meta-Llama-3-8B-Instruct", dict(quantization_config={"quant_method": "awq", "bits": 4}),
     r"quantization_config=.* is not supported \(quantized checkpoints"),
    ("Meta-Llama-3-8B-Instruct", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     r"rope_type='yarn' is not supported"),
    ("Llama-3.2-1B", dict(partial_rotary_factor=0.5), r"partial_rotary_factor=0\.5 is not supported"),
    ("Llama-3.2-1B", dict(pretraining_tp=2), r"pretraining_tp=2 is not supported"),
    ("Llama-3.2-1B", dict(sliding_window=512), r"sliding_window=512 is not supported"),
    ("Llama-3.2-1B", dict(attn_logit_softcapping=50.0), r"attn_logit_softcapping=50\.0 is not supported"),
    ("Qwen2.5-7B-Instruct", dict(use_qk_norm=True), r"use_qk_norm=True is not supported"),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), r"scale_attn_by_inverse_layer_idx=True is not supported"),
    ("gpt2", dict(activation_function="gelu_fast"), r"activation_function='gelu_fast' is not supported"),
    ("opt-125m", dict(do_layer_norm_before=False), r"do_layer_norm_before=False is not supported \(post-norm"),
    ("opt-125m", dict(word_embed_proj_dim=512), r"word_embed_proj_dim=512 differs from hidden_size=768"),
    ("gemma-2-9b-it", dict(attention_bias=True), r"attention_bias=True is not supported"),
    ("gemma-2-9b-it", dict(layer_types=["sliding_attention"] * 41), r"layer_types has 41 entries"),
    ("gpt-neo-125m", dict(attention_layers=["global", "sparse"] * 6), r"expected 12 of 'global' or 'local'"),
])
def test_math_changing_values_we_do_not_reproduce_are_errors(name, change, match):
    with pytest.raises(ConfigError, match=match):
        from_hf_config({**load("hf_configs", name), **change})

"""Loaded HF checkpoints reproduce transformers (float32, eager attention): logits and every layer's
q/k/v before and after RoPE, on 256-token prompts, max abs error <= 1e-4."""
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from hf_testlib import hf_sites, save, tiny_hf
from minimal_lm import Llama3Scaling, forward, from_pretrained
from minimal_lm.hf_config import from_hf_config

TOL = 1e-4
LLAMA3 = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)
CASES = {
    "llama_kv1_tied": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "llama_kv2_llama3": ("llama", dict(num_key_value_heads=2, rope_parameters=LLAMA3)),
    "llama_full_kv_head_dim": ("llama", dict(num_key_value_heads=4, head_dim=24)),
    "mistral": ("mistral", dict(num_key_value_heads=2)),
    "qwen2_bias": ("qwen2", dict(num_key_value_heads=2)),
}
SITES = ("q_pre", "k_pre", "q", "k", "v")


def capture(site, layer, x):
    return x if site in SITES else None


_forward = jax.jit(forward, static_argnames=("cfg", "capture"))


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    arch, kw = CASES[request.param]
    model = tiny_hf(arch, **kw)
    path = save(model, tmp_path_factory.mktemp(request.param))
    return request.param, model, path, from_pretrained(path)


def test_logits_and_qkv_match_hf(case):
    name, model, path, pre = case
    tokens_BT = np.random.RandomState(0).randint(0, pre.config.vocab_size, (2, 256))
    ref_logits, ref_sites = hf_sites(model, tokens_BT)
    out = _forward(pre.params, jnp.asarray(tokens_BT), cfg=pre.config, capture=capture)
    assert np.abs(ref_logits).std() > 0.3, "logits too small for the tolerance to mean anything"
    err = np.abs(np.asarray(out.logits) - ref_logits).max()
    assert err <= TOL, f"{name}: logits differ by {err}"
    for site in SITES:
        ours = np.asarray(out.captured[site])
        assert ours.shape == ref_sites[site].shape, site
        for layer in range(ours.shape[0]):
            err = np.abs(ours[layer] - ref_sites[site][layer]).max()
            assert err <= TOL, f"{name}: {site} of layer {layer} differs by {err}"


def test_config_mapping(case):
    name, model, path, pre = case
    c, cfg = model.config, pre.config
    assert (cfg.num_heads, cfg.kv_heads, cfg.d_model, cfg.hidden_dim) == (
        c.num_attention_heads, c.num_key_value_heads, c.hidden_size, c.intermediate_size)
    assert cfg.dim_per_head == (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    assert cfg.tie_embeddings == c.tie_word_embeddings and ("unembed" in pre.params) != cfg.tie_embeddings
    assert cfg.qkv_bias == name.startswith("qwen2")
    assert cfg.max_seq_len == c.max_position_embeddings and cfg.norm_eps == c.rms_norm_eps
    assert cfg.rope_scaling == (Llama3Scaling(8.0, 1.0, 4.0, 64) if "llama3" in name else None)
    assert cfg.dtype == cfg.param_dtype == "float32"


def test_v4_config_spelling_reads_the_same(tmp_path):
    """transformers v4 files spell rope as rope_theta + rope_scaling and dtype as torch_dtype."""
    path = save(tiny_hf("llama", rope_parameters={**LLAMA3, "rope_theta": 5e5}), tmp_path)
    v5 = json.load(open(f"{path}/config.json"))
    v4 = {k: v for k, v in v5.items() if k not in ("rope_parameters", "dtype")}
    rope = dict(v5["rope_parameters"])
    v4.update(rope_theta=rope.pop("rope_theta"), rope_scaling=rope, torch_dtype="float32")
    assert from_hf_config(v4) == from_hf_config(v5)
    assert from_hf_config(v5).rope_theta == 5e5


def test_bf16_stays_bf16_and_dtype_converts(tmp_path):
    model = tiny_hf("llama").to(torch.bfloat16)
    path = save(model, tmp_path)
    ref = model.model.layers[1].self_attn.q_proj.weight.detach().float().numpy()  # [H*E, D]
    pre = from_pretrained(path)
    assert pre.config.dtype == pre.config.param_dtype == "bfloat16"
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(pre.params))
    wq = np.asarray(pre.params["layers"]["wq"][1]).astype(np.float32)  # [D, H, E]
    np.testing.assert_array_equal(wq.reshape(wq.shape[0], -1).T, ref)
    f32 = from_pretrained(path, dtype="float32")
    assert f32.config.dtype == "float32" and f32.params["embed"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(f32.params["embed"]),
                                  np.asarray(pre.params["embed"]).astype(ml_dtypes.bfloat16).astype(np.float32))

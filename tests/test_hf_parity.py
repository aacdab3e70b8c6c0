"""Loaded HF checkpoints of every supported family reproduce transformers (float32, eager attention):
logits, every layer's q/k/v before and after the q/k norm and the rotation, and the attention
probabilities, on 256-token prompts (longer than every window), max abs error <= 1e-4; greedy
generation token for token; the KV cache equals full recomputation."""
import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from hf_testlib import generate_hf, hf_layer_windows, hf_sites, save, tiny_hf
from minimal_lm import Llama3Scaling, forward, from_pretrained, generate
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
    "llama_attention_mlp_bias": ("llama", dict(attention_bias=True, mlp_bias=True)),
    "mistral_window": ("mistral", dict(sliding_window=24)),
    "qwen2_window": ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=1)),
    "qwen3_qk_norm": ("qwen3", dict(tie_word_embeddings=True)),
    "gemma2": ("gemma2", {}),
    "gpt2": ("gpt2", {}),
    "opt": ("opt", {}),
    "gpt_neo": ("gpt_neo", {}),
    "gpt_neox": ("gpt_neox", {}),
}
SITES = ("q_proj", "k_proj", "q_pre", "k_pre", "q", "k", "v", "attn_probs")


class Capture:
    """Keeps every site it names, attention probabilities included (a hook asks for them by name)."""

    sites = SITES

    def __call__(self, site, layer, x):
        return x if site in SITES else None

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, Capture)


capture = Capture()
_forward = jax.jit(forward, static_argnames=("cfg", "capture"))
_cached = jax.jit(lambda params, tokens_BT, positions_BT, cache, cfg: forward(
    params, tokens_BT, cfg, positions_BT=positions_BT, cache=cache), static_argnames=("cfg",))


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


def test_windows_as_hf_applies_them(case):
    name, model, path, pre = case
    hf_windows = tuple(0 if w >= pre.config.max_seq_len else w for w in hf_layer_windows(model))  # never binds
    assert (pre.config.layer_windows or (0,) * pre.config.num_layers) == hf_windows
    if "window" in name or name in ("gemma2", "gpt_neo"):
        assert any(0 < w < 256 for w in hf_windows), "the test prompts must be longer than a window"


def test_greedy_generation_matches_hf(case):
    """Left-padded prompts of two lengths, longer than every window, 24 new tokens each."""
    name, model, path, pre = case
    rng = np.random.RandomState(1)
    prompts = [rng.randint(3, pre.config.vocab_size, n).tolist() for n in (70, 41)]
    assert generate(pre.params, pre.config, prompts, 24) == generate_hf(model, prompts, 24)


def test_kv_cache_equals_full_recomputation(case):
    """Logits of one cached prefill + decode steps equal those of the whole sequence without a cache."""
    name, model, path, pre = case
    from minimal_lm import init_cache

    cfg = pre.config
    tokens_BT = jnp.asarray(np.random.RandomState(2).randint(0, cfg.vocab_size, (2, 80)))
    full = np.asarray(_forward(pre.params, tokens_BT, cfg=cfg, capture=None).logits)
    cache = init_cache(cfg, 2, 96)
    out = _cached(pre.params, tokens_BT[:, :60], jnp.arange(60)[None].repeat(2, 0), cache, cfg=cfg)
    steps = [np.asarray(out.logits)]
    cache = out.cache
    for t in range(60, 80):
        o = _cached(pre.params, tokens_BT[:, t:t + 1], jnp.full((2, 1), t), cache, cfg=cfg)
        steps.append(np.asarray(o.logits))
        cache = o.cache
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-4, rtol=0)


def test_config_mapping(case):
    name, model, path, pre = case
    c, cfg = model.config, pre.config
    assert (cfg.num_heads, cfg.d_model, cfg.num_layers) == (c.num_attention_heads, c.hidden_size, c.num_hidden_layers)
    assert cfg.tie_embeddings == c.tie_word_embeddings and ("unembed" in pre.params) != cfg.tie_embeddings
    assert cfg.dtype == cfg.param_dtype == "float32"
    if CASES[name][0] in ("llama", "mistral", "qwen2", "qwen3"):
        assert (cfg.kv_heads, cfg.hidden_dim) == (c.num_key_value_heads, c.intermediate_size)
        assert cfg.dim_per_head == (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
        assert cfg.qkv_bias == (name.startswith("qwen2") or name.startswith("llama_attention"))
        assert cfg.max_seq_len == c.max_position_embeddings and cfg.norm_eps == c.rms_norm_eps
        assert cfg.rope_scaling == (Llama3Scaling(8.0, 1.0, 4.0, 64) if "llama3" in name else None)


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


def test_missing_or_misshaped_tensor_is_named(case, tmp_path):
    """For every family: drop one layer tensor, then give another a wrong shape; the error names it."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from minimal_lm import CheckpointError

    name, model, path, pre = case
    tensors = load_file(f"{path}/model.safetensors")
    layer = sorted(n for n in tensors if ".1." in n and n.endswith(".weight") and tensors[n].ndim == 2)
    dropped, bent = layer[0], layer[-1]
    for label, change, match in [
        ("missing", lambda t: t.pop(dropped), rf"missing tensor\(s\) {dropped}"),
        ("shape", lambda t: t.__setitem__(bent, t[bent][:, :-1].copy()), rf"tensor '{bent}' has shape"),
    ]:
        d = tmp_path / label
        shutil.copytree(path, d)
        bad = dict(tensors)
        change(bad)
        save_file(bad, str(d / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(CheckpointError, match=match):
            from_pretrained(d)

"""Attention sinks (probes.sinks): first-token mass per layer and head against transformers' eager attention
weights on left-padded batches, against a model whose attention is known in closed form, and the eps count."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_testlib import hf_layers, random_params, save, tiny_hf
from minimal_lm import ModelConfig, forward, from_pretrained
from probes.sinks import FirstTokenMass, first_token_mass, first_token_sums, sink_summary

LENGTHS = (40, 29, 17)  # longer than every window below; rows 2 and 3 left padded


def left_padded(lengths, vocab, seed=0):
    rng = np.random.RandomState(seed)
    T = max(lengths)
    tokens_BT = rng.randint(3, vocab, (len(lengths), T))
    mask_BT = np.arange(T)[None] >= T - np.array(lengths)[:, None]
    return np.where(mask_BT, tokens_BT, 0), mask_BT


def hf_first_token_mass(model, tokens_BT, mask_BT, include_first=True):
    """alpha [L, H] from HF's eager attention weights (output_attentions=True), computed here in numpy."""
    positions_BT = np.maximum(np.cumsum(mask_BT, 1) - 1, 0)
    with torch.no_grad():
        out = model(torch.tensor(tokens_BT), attention_mask=torch.tensor(mask_BT.astype(np.int64)),
                    position_ids=torch.tensor(positions_BT), output_attentions=True)
    first_B = mask_BT.argmax(1)
    queries_BT = mask_BT & (include_first | (np.arange(mask_BT.shape[1])[None] != first_B[:, None]))
    alpha = []
    for a_BHTS in out.attentions:
        a_BHTS = a_BHTS.double().numpy()
        on_first_BHT = a_BHTS[np.arange(len(first_B)), :, :, first_B]
        alpha.append((on_first_BHT * queries_BT[:, None]).sum((0, 2)) / queries_BT.sum())
    return np.stack(alpha)


@pytest.mark.parametrize("arch, kw", [("llama", {}), ("mistral", dict(sliding_window=8)), ("gpt_neo", {})],
                         ids=["llama", "mistral_window8", "gpt_neo_local16"])
def test_first_token_mass_matches_hf_eager_attention(tmp_path, arch, kw):
    model = tiny_hf(arch, **kw)
    with torch.no_grad():  # sharper attention than the random init's near-uniform one
        for attn in hf_layers(model):
            attn.q_proj.weight.mul_(6.0)
    cfg, params, _ = from_pretrained(save(model, tmp_path))
    tokens_BT, mask_BT = left_padded(LENGTHS, cfg.vocab_size)
    if kw or arch == "gpt_neo":
        assert cfg.windowed and min(w for w in cfg.layer_windows if w) < max(LENGTHS)
    for include_first in (True, False):
        ref_LH = hf_first_token_mass(model, tokens_BT, mask_BT, include_first)
        ours_LH, n = first_token_mass(params, cfg, [(tokens_BT, mask_BT)], include_first=include_first,
                                      progress=False)
        assert n == sum(LENGTHS) - (0 if include_first else len(LENGTHS))
        assert ref_LH.std() > 0.01, "the heads must differ for the comparison to mean anything"
        np.testing.assert_allclose(ours_LH, ref_LH, atol=1e-5, rtol=0)


UNIFORM = ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2, position="none", max_seq_len=64,
                      layer_windows=(0, 4))


def uniform_params():
    """Zero queries: every score is 0, so each query attends uniformly to the keys it can see."""
    params = random_params(UNIFORM)
    params["layers"]["wq"] = jnp.zeros_like(params["layers"]["wq"])
    return params


def test_uniform_attention_gives_the_harmonic_mean_and_batches_accumulate():
    """Query p of a row (its p-th real token) sees p + 1 keys (full layer) or min(p + 1, 4) (window 4, the first
    token only while p < 4): it puts 1 / (p + 1), or 1 / (p + 1) for p < 4 and 0 after, on the first token."""
    tokens_BT, mask_BT = left_padded((12, 7, 5), UNIFORM.vocab_size)
    p = [np.arange(n) for n in (12, 7, 5)]
    full = np.mean(np.concatenate([1 / (q + 1) for q in p]))
    window = np.mean(np.concatenate([np.where(q < 4, 1 / (q + 1), 0.0) for q in p]))
    later = np.mean(np.concatenate([1 / (q[1:] + 1) for q in p]))
    params = uniform_params()
    alpha_LH, n = first_token_mass(params, UNIFORM, [(tokens_BT[:2], mask_BT[:2]), (tokens_BT[2:], mask_BT[2:])],
                                   progress=False)
    assert n == 24
    np.testing.assert_allclose(alpha_LH, [[full] * 2, [window] * 2], rtol=1e-5)
    alpha_LH, _ = first_token_mass(params, UNIFORM, [(tokens_BT, mask_BT)], include_first=False, progress=False)
    np.testing.assert_allclose(alpha_LH[0], [later] * 2, rtol=1e-5)


def test_the_capture_holds_only_per_head_sums():
    """Nothing [B, H, T, S] leaves a layer: the capture result is [L, H] (and forward stacks that alone)."""
    tokens_BT, mask_BT = left_padded((9, 6), UNIFORM.vocab_size)
    out = jax.eval_shape(lambda p, t, m: forward(p, t, UNIFORM, mask_BT=m, capture=FirstTokenMass()).captured,
                         uniform_params(), tokens_BT, mask_BT)
    assert {k: v.shape for k, v in out.items()} == {"attn_probs": (2, 2)}
    sums_LH, n = first_token_sums(uniform_params(), jnp.asarray(tokens_BT), jnp.asarray(mask_BT), UNIFORM)
    assert sums_LH.shape == (2, 2) and int(n) == 15


def test_sink_share_counts_heads_strictly_above_eps():
    alpha_LH = np.array([[0.1, 0.31, 0.3, 0.9], [0.5, 0.0, 0.29, 0.2]])
    s = sink_summary(alpha_LH)
    assert s["eps"] == 0.3 and s["sink_heads"] == [2, 1] and s["sink_share_layers"] == [0.5, 0.25]
    assert s["sink_share"] == 3 / 8
    assert sink_summary(alpha_LH, eps=0.05)["sink_share"] == 7 / 8
    np.testing.assert_allclose(s["mean_mass"], alpha_LH.mean(1))
    assert s["max_mass"] == [0.9, 0.5] and np.asarray(s["first_token_mass"]).shape == (2, 4)
    with pytest.raises(ValueError, match="eps"):
        sink_summary(alpha_LH, eps=1.5)

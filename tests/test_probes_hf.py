"""M for q, k, v before and after RoPE equals norms of Hugging Face's own projections and rotary
embedding on a tiny random Llama (float32, eager attention), loaded through from_pretrained."""
import numpy as np
import pytest
import torch

from hf_testlib import hf_sites, save, tiny_hf
from minimal_lm import from_pretrained
from probes import massive

H, K, E = 4, 2, 16


@pytest.fixture(scope="module")
def hf_model():
    return tiny_hf("llama", seed=0, rope_theta=500.0)


def test_norms_match_hf_projections_and_rotary(hf_model, tmp_path):
    cfg, params, _ = from_pretrained(save(hf_model, tmp_path / "ckpt"))
    tokens_BT = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 40)).astype(np.int32)
    _, raw = hf_sites(hf_model, tokens_BT)
    ms, n = massive.norm_matrices(params, cfg, [(tokens_BT, np.ones(tokens_BT.shape, bool))], progress=False)
    assert n == tokens_BT.size
    for site in massive.PROBE_SITES:
        want_LHE = np.sqrt((raw[site].astype(np.float64) ** 2).sum((1, 2)))
        assert ms[site].shape == want_LHE.shape == (2, H if site.startswith("q") else K, E)
        np.testing.assert_allclose(ms[site], want_LHE, rtol=1e-5, err_msg=site)
    assert not np.allclose(ms["q"], ms["q_pre"], rtol=1e-3)


def test_planted_column_in_hf_weights_is_found_by_both_rules(tmp_path):
    """Scale the q_proj and k_proj output rows of one dim in every head of layer 0 (one column of W_q, W_k)."""
    dim = E // 2 - 1
    model = tiny_hf("llama", seed=0, rope_theta=500.0)
    with torch.no_grad():
        attn = model.model.layers[0].self_attn
        for proj, heads in ((attn.q_proj, H), (attn.k_proj, K)):
            proj.weight[[h * E + dim for h in range(heads)]] *= 25.0
    cfg, params, _ = from_pretrained(save(model, tmp_path / "planted"))
    tokens_BT = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 24)).astype(np.int32)
    ms, _ = massive.norm_matrices(params, cfg, [(tokens_BT, np.ones(tokens_BT.shape, bool))], progress=False)
    for site, heads in (("q_pre", H), ("q", H), ("k_pre", K), ("k", K)):
        want = {(0, h, dim) for h in range(heads)}
        assert massive.threshold_rule(ms[site]) == want, site
        assert {s for s in massive.topk_rule(ms[site], 1) if s[0] == 0} == want, site
    assert massive.threshold_rule(ms["v"]) == set()


def test_qwen3_probes_cover_the_projections_before_the_qk_norm(tmp_path):
    """With q/k norms, q_proj/k_proj differ from q_pre/k_pre: the default sites include them, their M equals
    HF's q_proj/k_proj outputs, and the massive report records them."""
    from probes.massive_cmd import massive_report

    model = tiny_hf("qwen3", seed=0)
    cfg, params, _ = from_pretrained(save(model, tmp_path / "ckpt"))
    assert massive.probe_sites(cfg) == massive.PROBE_SITES + ("q_proj", "k_proj")
    assert massive.probe_sites(cfg.replace(qk_norm=False)) == massive.PROBE_SITES
    tokens_BT = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 24)).astype(np.int32)
    _, raw = hf_sites(model, tokens_BT)
    ms, _ = massive.norm_matrices(params, cfg, [(tokens_BT, np.ones(tokens_BT.shape, bool))],
                                  massive.probe_sites(cfg), progress=False)
    for site in ("q_proj", "k_proj"):
        want_LHE = np.sqrt((raw[site].astype(np.float64) ** 2).sum((1, 2)))
        np.testing.assert_allclose(ms[site], want_LHE, rtol=1e-5, err_msg=site)
        assert not np.allclose(ms[site], ms[site.replace("proj", "pre")], rtol=1e-3)
    record = massive_report(params, cfg, tokens_BT.tolist(), tmp_path / "out", progress=False)
    assert record["settings"]["sites"][-2:] == ["q_proj", "k_proj"] and "q_proj" in record

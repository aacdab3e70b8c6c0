"""Norm matrices and selection rules against NumPy references computed from raw captured activations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from minimal_lm import ModelConfig, forward, init_params
from probes import massive
from probes.prompts import left_padded_batches

CFG = ModelConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  max_seq_len=64)
LOWEST_FREQ_DIM = CFG.dim_per_head // 2 - 1


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def token_lists():
    rng = np.random.default_rng(0)
    return [rng.integers(1, CFG.vocab_size, n).tolist() for n in (5, 16, 9, 12, 3)]


@jax.jit
def _raw(params, tokens_BT, mask_BT):
    return forward(params, tokens_BT, CFG, mask_BT=mask_BT, capture=lambda s, i, x: x).captured


def reference_m(params, batches):
    """sqrt of the sum over batches and valid tokens of x**2, from the raw [L, B, T, heads, E] activations."""
    total = {}
    for tokens_BT, mask_BT in batches:
        raw = _raw(params, jnp.asarray(tokens_BT), jnp.asarray(mask_BT))
        for site in massive.PROBE_SITES:
            x = np.asarray(raw[site], np.float64)[:, np.asarray(mask_BT)]  # [L, N valid, heads, E]
            total[site] = total.get(site, 0.0) + (x**2).sum(1)
    return {s: np.sqrt(v) for s, v in total.items()}


def test_norm_matrices_match_numpy_reference(params, token_lists):
    batches = list(left_padded_batches(token_lists, batch_size=2, pad_id=0))
    ms, n_tokens = massive.norm_matrices(params, CFG, batches, progress=False)
    ref = reference_m(params, batches)
    assert n_tokens == sum(map(len, token_lists))
    for site in massive.PROBE_SITES:
        heads = CFG.num_heads if site.startswith("q") else CFG.kv_heads
        assert ms[site].shape == (CFG.num_layers, heads, CFG.dim_per_head)
        np.testing.assert_allclose(ms[site], ref[site], rtol=1e-5, err_msg=site)
        assert massive.threshold_rule(ms[site], 1.3) == reference_threshold(ref[site], 1.3)
        assert massive.topk_rule(ms[site], 2) == reference_topk(ref[site], 2)


def test_padding_does_not_contribute(params, token_lists):
    """A short and a long prompt left-padded together give the M of the two run alone, whatever the pad ids."""
    pair = [token_lists[4], token_lists[1]]
    [(tokens_BT, mask_BT)] = left_padded_batches(pair, batch_size=2, pad_id=0)
    assert mask_BT.shape == (2, 32) and mask_BT.sum() == 3 + 16
    alone = [(np.array([t], np.int32), np.ones((1, len(t)), bool)) for t in pair]
    other_pad = np.where(mask_BT, tokens_BT, CFG.vocab_size - 1)
    ms_pad, _ = massive.norm_matrices(params, CFG, [(tokens_BT, mask_BT)], progress=False)
    ms_alone, _ = massive.norm_matrices(params, CFG, alone, progress=False)
    ms_other, _ = massive.norm_matrices(params, CFG, [(other_pad, mask_BT)], progress=False)
    for site in massive.PROBE_SITES:
        np.testing.assert_allclose(ms_pad[site], ms_alone[site], rtol=1e-5, err_msg=site)
        np.testing.assert_allclose(ms_other[site], ms_pad[site], rtol=1e-6, err_msg=site)


def reference_threshold(m_LHE, lam):
    out = set()
    for (l, h, d), v in np.ndenumerate(m_LHE):
        if v > lam * m_LHE[l, h].mean():
            out.add((l, h, d))
    return out


def reference_topk(m_LHE, k):
    out = set()
    for l in range(m_LHE.shape[0]):
        for h in range(m_LHE.shape[1]):
            ranked = sorted(range(m_LHE.shape[2]), key=lambda d: (-m_LHE[l, h, d], d))
            out.update((l, h, d) for d in ranked[:k])
    return out


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(2, 8)),
              elements=st.floats(0, 100)), st.floats(0.5, 6), st.integers(1, 2))
def test_selection_rules_match_reference(m_LHE, lam, k):
    assert massive.threshold_rule(m_LHE, lam) == reference_threshold(m_LHE, lam)
    assert massive.topk_rule(m_LHE, k) == reference_topk(m_LHE, k)
    assert massive.topk_dims(m_LHE, k).shape == m_LHE.shape[:2] + (k,)


@pytest.mark.parametrize("select", ["massive", "non_massive"])
def test_selection_is_the_same_on_numpy_records_and_under_jit(select):
    """One rule serves the records (numpy in, numpy out) and the disruption (jax, traced lam)."""
    m_LHE = np.random.default_rng(0).integers(0, 4, (3, 4, 8)).astype(np.float32)
    m_LHE[0, 0, 5] = 40.0
    for k, lam in ((2, None), (None, 1.5)):
        want = massive.select_dims(m_LHE, select, k, lam)
        got = jax.jit(massive.select_dims, static_argnums=(1, 2))(jnp.asarray(m_LHE), select, k, lam)
        assert isinstance(want, np.ndarray) and want.dtype == bool and want.any()
        np.testing.assert_array_equal(np.asarray(got), want)


def planted(params, layer, dim, scale=30.0):
    """Scale one column of W_q and W_k in one layer: that dim of q and k gets `scale` times larger."""
    layers = dict(params["layers"])
    for w in ("wq", "wk"):
        layers[w] = layers[w].at[layer, :, :, dim].multiply(scale)
    return {**params, "layers": layers}


def test_planted_massive_dim_is_found_and_flat_model_reports_none(params, token_lists):
    batches = list(left_padded_batches(token_lists, batch_size=8))
    flat, _ = massive.norm_matrices(params, CFG, batches, progress=False)
    ms, _ = massive.norm_matrices(planted(params, 1, LOWEST_FREQ_DIM), CFG, batches, progress=False)
    freq = massive.frequency_map(CFG)
    for site in massive.PROBE_SITES:
        assert massive.threshold_rule(flat[site]) == set(), site
        assert massive.summarize(flat[site], freq)["massive_count"] == [0, 0]
    for site in ("q_pre", "k_pre", "q", "k"):
        heads = ms[site].shape[1]
        want = {(1, h, LOWEST_FREQ_DIM) for h in range(heads)}
        assert massive.threshold_rule(ms[site]) == want, site
        assert massive.topk_rule(ms[site], 1) >= want and {s for s in massive.topk_rule(ms[site], 1)
                                                           if s[0] == 1} == want, site
        s = massive.summarize(ms[site], freq)
        assert s["massive_count"] == [0, heads] and s["concentration"][1] == 1.0
        assert s["top_freq_index"][1] == LOWEST_FREQ_DIM and s["lowfreq_share"][1] == 1.0
        assert s["lowfreq_share_threshold"] == [None, 1.0]
    assert massive.threshold_rule(ms["v"]) == set()


def test_frequency_map_quarter_and_no_rotation():
    f = massive.frequency_map(CFG)
    assert f["freq_E"].tolist() == list(range(8)) * 2
    assert np.flatnonzero(f["low_E"]).tolist() == [6, 7, 14, 15] and f["chance_share"] == 0.25
    assert f["rotated"]
    partial = massive.frequency_map(CFG.replace(rope_fraction=0.5))
    assert partial["freq_E"].tolist() == [0, 1, 2, 3] * 2 + [-1] * 8
    assert np.flatnonzero(partial["low_E"]).tolist() == [3, 7]
    nope = massive.frequency_map(CFG.replace(position="none"))
    assert not nope["rotated"] and nope["freq_E"].tolist() == f["freq_E"].tolist()


def test_concentration_counts_both_stripes_as_one_frequency():
    m_LHE = np.ones((1, 4, 16))
    m_LHE[0, 0, 7] = m_LHE[0, 1, 15] = m_LHE[0, 2, 7] = 9.0
    m_LHE[0, 3, 2] = 9.0
    share, mode = massive.concentration(m_LHE, massive.frequency_map(CFG)["freq_E"])
    assert share == [0.75] and mode == [7]


def test_bad_sites_and_k_are_rejected():
    with pytest.raises(ValueError, match="resid"):
        massive.check_sites(["q", "resid"])
    with pytest.raises(ValueError, match="k=17"):
        massive.topk_dims(np.ones((1, 1, 16)), 17)

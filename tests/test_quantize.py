"""Simulated round-to-nearest quantization of q/k activations and attention weights, with and without
protecting the massive dims."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_testlib import random_params
from minimal_lm import ModelConfig, forward
from probes import massive
from probes.quantize import QuantizeActs, massive_columns, quantize_heads, quantize_weights

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  max_seq_len=32, init_std=0.2)


def rtn_reference(x, bits):
    """One block: symmetric round-to-nearest in float64."""
    x = np.asarray(x, np.float64)
    qmax = 2 ** (bits - 1) - 1
    scale = np.abs(x).max() / qmax
    return np.zeros_like(x) if scale == 0 else np.clip(np.round(x / scale), -qmax, qmax) * scale


def activations(seed=0, B=2, T=12, H=4, E=16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, H, E)).astype(np.float32)
    x[..., 13] *= 40.0  # a massive dim in every head, as in the paper's Q and K
    mask = np.ones((B, T), bool)
    mask[1, :5] = False
    return x, mask


@pytest.mark.parametrize("granularity, group", [("per_token", 0), ("per_channel", 0), ("per_group", 4)])
def test_activation_blocks_match_reference(granularity, group):
    x, mask = activations()
    got = np.asarray(quantize_heads(jnp.asarray(x), jnp.asarray(mask), 4, granularity, group))
    b, t, h = 1, 7, 2
    if granularity == "per_token":
        np.testing.assert_allclose(got[b, t, h], rtn_reference(x[b, t, h], 4), rtol=1e-6)
    elif granularity == "per_group":
        np.testing.assert_allclose(got[b, t, h, 4:8], rtn_reference(x[b, t, h, 4:8], 4), rtol=1e-6)
    else:
        np.testing.assert_allclose(got[b, 5:, h, 3], rtn_reference(x[b, 5:, h, 3], 4), rtol=1e-6)


@pytest.mark.parametrize("granularity, group", [("per_token", 0), ("per_channel", 0), ("per_group", 4)])
def test_activation_error_falls_as_bits_rise(granularity, group):
    x, mask = activations()
    errors = [float(np.abs(np.asarray(quantize_heads(jnp.asarray(x), jnp.asarray(mask), bits, granularity, group))
                           - x)[mask].mean()) for bits in (2, 3, 4, 8)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.1 * errors[0]


def test_protected_massive_dims_are_bit_exact_and_protection_helps():
    x, mask = activations()
    ignore = QuantizeActs(bits=4, granularity="per_token", sites="q")
    protect = QuantizeActs(bits=4, granularity="per_token", sites="q", protect_massive=True, k=1)
    xj, mj = jnp.asarray(x), jnp.asarray(mask)
    y_protect = np.asarray(protect.bind(mj)("q", 0, xj))
    y_ignore = np.asarray(ignore.bind(mj)("q", 0, xj))
    np.testing.assert_array_equal(y_protect[..., 13], x[..., 13])
    assert not np.array_equal(y_ignore[..., 13], x[..., 13])
    rest = np.arange(16) != 13
    err_protect = np.abs(y_protect - x)[mask][..., rest].mean()
    err_ignore = np.abs(y_ignore - x)[mask][..., rest].mean()
    assert err_protect < 0.2 * err_ignore, (err_protect, err_ignore)
    np.testing.assert_array_equal(protect.bind(mj)("k", 0, xj), xj)  # sites not listed pass through
    assert "kept in full precision" in protect.describe() and "int4" in ignore.describe()


@pytest.fixture(scope="module")
def params():
    return random_params(CFG, seed=0, std=0.2)


def test_weight_error_falls_with_bits_and_protected_columns_are_exact(params):
    ms = {"q_pre": np.random.default_rng(0).random((2, 4, 8)), "k_pre": np.random.default_rng(1).random((2, 2, 8))}
    protect = massive_columns(ms, k=1)
    assert protect["wq"].shape == (2, 4, 8) and protect["wq"].sum() == 2 * 4
    errs = []
    for bits in (2, 4, 8):
        q = quantize_weights(params, bits, granularity="per_group", group_size=8, protect=protect)
        errs.append(float(jnp.abs(q["layers"]["wo"] - params["layers"]["wo"]).mean()))
        wq, wq0 = np.asarray(q["layers"]["wq"]), np.asarray(params["layers"]["wq"])
        keep = np.broadcast_to(protect["wq"][:, None], wq.shape)
        np.testing.assert_array_equal(wq[keep], wq0[keep])
        assert not np.array_equal(wq[~keep], wq0[~keep])
        assert q["layers"]["w_up"] is params["layers"]["w_up"] and q["embed"] is params["embed"]
    assert errs[0] > errs[1] > errs[2]


def test_weight_per_channel_matches_reference(params):
    q = quantize_weights(params, 4, targets=("wq", "wo"))
    wq, wo = np.asarray(params["layers"]["wq"]), np.asarray(params["layers"]["wo"])
    np.testing.assert_allclose(q["layers"]["wq"][1, :, 2, 5], rtn_reference(wq[1, :, 2, 5], 4), rtol=1e-6)
    np.testing.assert_allclose(q["layers"]["wo"][0, :, :, 7], rtn_reference(wo[0, :, :, 7], 4), rtol=1e-6)


def test_quantized_models_run_and_int8_is_close(params):
    toks = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, CFG.vocab_size)
    run = jax.jit(lambda p, hook=None: forward(p, toks, CFG, intervention=hook).logits)  # hook: a traced pytree
    plain = run(params)
    for transform in (lambda b: (quantize_weights(params, b), None), lambda b: (params, QuantizeActs(bits=b))):
        err8, err3 = (float(jnp.abs(run(*transform(b)) - plain).max()) for b in (8, 3))
        assert 0 < err8 < err3, (err8, err3)
        assert err8 < 0.05 * float(jnp.abs(plain).max())


def test_massive_columns_of_a_planted_dim(params):
    p = jax.tree.map(np.array, params)
    p["layers"]["wq"][0, :, :, 3] *= 30.0
    toks = np.random.default_rng(0).integers(0, 64, (2, 16))
    ms, _ = massive.norm_matrices(p, CFG, [(toks, np.ones(toks.shape, bool))], sites=("q_pre", "k_pre"),
                                  progress=False)
    cols = massive_columns(ms, k=1)
    assert cols["wq"][0, :, 3].all() and cols["wq"][0].sum() == 4


@pytest.mark.parametrize("call, match", [
    (lambda: QuantizeActs(bits=1), "bits=1"), (lambda: QuantizeActs(granularity="per_row"), "per_row"),
    (lambda: QuantizeActs(granularity="per_group"), "group_size"),
    (lambda: QuantizeActs(k=1, lam=5.0), "one rule"),
    (lambda: QuantizeActs(k=0), "k=0"), (lambda: QuantizeActs(lam=-1.0), "lam=-1.0"),
    (lambda: quantize_heads(jnp.ones((1, 2, 1, 6)), None, 4, "per_group", 4), "divisor of head_dim=6"),
    (lambda: quantize_weights({"layers": {"wq": 0}}, 4, granularity="rows"), "rows"),
    (lambda: quantize_weights({"layers": {"wq": 0}}, 4, targets=("wq", "embed")), "embed"),
])
def test_bad_settings_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_protect_mask_shape_is_named(params):
    with pytest.raises(ValueError, match=r"protect\['wq'\]: shape"):
        quantize_weights(params, 4, protect={"wq": np.ones((2, 4), bool)})
    with pytest.raises(ValueError, match="group_size=5"):
        quantize_weights(params, 4, granularity="per_group", group_size=5)

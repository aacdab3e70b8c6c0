"""The decoder: schemes, sites, hooks, padding, cache, GQA and execution variants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm import SITES, ModelConfig, forward, init_cache, init_params
from minimal_lm.model import SCORE_SITES, rms_norm

SCHEMES = ["rope", "none", "learned", "alibi"]


def tiny(position="rope", **kw):
    base = dict(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=32,
                position=position, init_std=0.2)
    return ModelConfig(**{**base, **kw})


def tokens(B=2, T=12, seed=0, vocab=64):
    return jax.random.randint(jax.random.key(seed), (B, T), 0, vocab)


@pytest.mark.parametrize("position", SCHEMES)
def test_causal_by_gradient(position):
    """d logits[:, t] / d resid[:, s] is exactly zero for every later position s > t."""
    cfg = tiny(position)
    params = init_params(cfg, jax.random.key(1))
    toks = tokens()
    t = 5

    def out_at_t(delta_BTD):
        hook = lambda site, layer, x: jnp.where(layer == 0, x + delta_BTD, x) if site == "resid" else x
        return forward(params, toks, cfg, intervention=hook).logits[:, t].sum()

    g = jax.grad(out_at_t)(jnp.zeros((2, 12, cfg.d_model)))
    assert np.all(np.asarray(g[:, t + 1:]) == 0.0)
    assert np.abs(np.asarray(g[:, : t + 1])).sum() > 0


@pytest.mark.parametrize("position", SCHEMES)
def test_identity_intervention_changes_nothing(position):
    cfg = tiny(position)
    params = init_params(cfg, jax.random.key(2))
    toks = tokens()
    plain = jax.jit(lambda p, t: forward(p, t, cfg).logits)(params, toks)
    hooked = jax.jit(lambda p, t: forward(p, t, cfg, intervention=lambda s, l, x: x).logits)(params, toks)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(hooked))


def test_capture_returns_every_site_stacked_over_layers():
    cfg = tiny("rope")
    params = init_params(cfg, jax.random.key(3))
    toks = tokens()
    out = jax.jit(lambda p, t: forward(p, t, cfg, capture=lambda s, l, x: x))(params, toks)
    B, T, L, H, K, E, D = 2, 12, cfg.num_layers, cfg.num_heads, cfg.kv_heads, cfg.dim_per_head, cfg.d_model
    shapes = {"q_proj": (L, B, T, H, E), "k_proj": (L, B, T, K, E), "q_pre": (L, B, T, H, E),
              "k_pre": (L, B, T, K, E), "q": (L, B, T, H, E), "k": (L, B, T, K, E), "v": (L, B, T, K, E),
              "attn_out": (L, B, T, D), "mlp_out": (L, B, T, D), "resid": (L, B, T, D)}
    assert set(out.captured) == set(SITES) - set(SCORE_SITES), "score sites only for a hook that names them"
    assert {s: out.captured[s].shape for s in shapes} == shapes
    np.testing.assert_array_equal(out.captured["q_proj"], out.captured["q_pre"])
    h = rms_norm(params["embed"][toks], params["layers"]["attn_norm"][0], cfg.norm_eps)
    q0 = jnp.einsum("btd,dhe->bthe", h, params["layers"]["wq"][0])
    np.testing.assert_allclose(out.captured["q_pre"][0], q0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.captured["resid"][0] + out.captured["attn_out"][1] + out.captured["mlp_out"][1],
                               out.captured["resid"][1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(out.captured["q"][0], out.captured["q_pre"][0]), "RoPE must rotate q"
    # A capture that skips sites returns only the ones it kept, as small statistics.
    stats = forward(params, toks, cfg, capture=lambda s, l, x: jnp.sum(x * x) if s == "k" else None).captured
    assert set(stats) == {"k"} and stats["k"].shape == (L,)


def test_intervention_sees_an_int32_array_layer_index_scanned_and_unrolled():
    """The layer index is never a Python int: a traced int32 scalar under the scan (and under jit when
    unrolled), a concrete int32 array in an unjitted unrolled forward."""
    cfg = tiny("rope")
    params = init_params(cfg, jax.random.key(4))
    toks = tokens()
    seen = []

    def zero_v_in_layer_1(s, l, x):
        seen.append(l)
        return jnp.where(l == 1, 0.0, x) if s == "v" else x

    scanned = jax.jit(lambda p: forward(p, toks, cfg, intervention=zero_v_in_layer_1).logits)(params)
    unrolled = forward(params, toks, cfg.replace(scan_layers=False), intervention=zero_v_in_layer_1).logits
    plain = forward(params, toks, cfg).logits
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5, atol=1e-5)
    assert not np.allclose(scanned, plain)
    assert seen and all(isinstance(l, jax.Array) and l.shape == () and l.dtype == jnp.int32 for l in seen)
    assert any(isinstance(l, jax.core.Tracer) for l in seen)


@pytest.mark.parametrize("position", SCHEMES)
def test_left_padding_does_not_change_real_tokens(position):
    cfg = tiny(position)
    params = init_params(cfg, jax.random.key(5))
    toks = tokens(1, 10)
    pad = 3
    padded = jnp.concatenate([jnp.zeros((1, pad), toks.dtype), toks], axis=1)
    mask = jnp.arange(10 + pad)[None] >= pad
    ref = forward(params, toks, cfg).logits
    got = forward(params, padded, cfg, mask_BT=mask).logits[:, pad:]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", SCHEMES)
def test_kv_cache_decoding_equals_full_forward(position):
    cfg = tiny(position)
    params = init_params(cfg, jax.random.key(6))
    toks = tokens(2, 10)
    full = forward(params, toks, cfg).logits
    cache = init_cache(cfg, batch=2, length=16)
    out = forward(params, toks[:, :6], cfg, cache=cache)
    step_logits = [out.logits]
    cache = out.cache
    for t in range(6, 10):
        out = forward(params, toks[:, t:t + 1], cfg, cache=cache, positions_BT=jnp.full((2, 1), t))
        step_logits.append(out.logits)
        cache = out.cache
    np.testing.assert_allclose(jnp.concatenate(step_logits, axis=1), full, rtol=1e-5, atol=1e-5)
    assert int(cache.index) == 10


def test_gqa_equals_multi_head_with_repeated_kv_weights():
    gqa = tiny("rope", num_kv_heads=2)
    mha = gqa.replace(num_kv_heads=4)
    params = init_params(gqa, jax.random.key(7))
    rep = dict(params, layers=dict(params["layers"]))
    for w in ("wk", "wv"):
        rep["layers"][w] = jnp.repeat(params["layers"][w], 2, axis=2)
    toks = tokens()
    np.testing.assert_allclose(forward(params, toks, gqa).logits, forward(rep, toks, mha).logits,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_kv_head_counts_and_bias_and_untied(kv_heads):
    cfg = tiny("rope", num_kv_heads=kv_heads, qkv_bias=True, tie_embeddings=False, head_dim=12)
    params = init_params(cfg, jax.random.key(8))
    assert params["layers"]["wk"].shape == (2, 32, kv_heads, 12) and "unembed" in params
    logits = forward(params, tokens(), cfg).logits
    assert logits.shape == (2, 12, 64) and np.isfinite(np.asarray(logits)).all()


def test_execution_variants_agree_remat_unrolled_last_only():
    cfg = tiny("alibi")
    params = init_params(cfg, jax.random.key(9))
    toks = tokens()

    def loss(p, c):
        return jnp.mean(forward(p, toks, c).logits ** 2)

    ref_val, ref_grad = jax.value_and_grad(loss)(params, cfg)
    for variant in (cfg.replace(remat="full"), cfg.replace(remat="dots"), cfg.replace(scan_layers=False)):
        val, grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, variant)
        np.testing.assert_allclose(val, ref_val, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad, ref_grad)
    last = forward(params, toks, cfg, last_only=True).logits
    np.testing.assert_allclose(last[:, 0], forward(params, toks, cfg).logits[:, -1], rtol=1e-5, atol=1e-5)


def test_bf16_compute_keeps_fp32_params_and_stays_close():
    cfg = tiny("rope")
    params = init_params(cfg, jax.random.key(10))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    ref = forward(params, tokens(), cfg).logits
    low = forward(params, tokens(), cfg.replace(dtype="bfloat16")).logits
    assert low.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(low - ref))) < 0.1 * float(jnp.max(jnp.abs(ref)))


def test_hooks_with_bind_receive_the_call_mask():
    """A hook object's bind(mask_BT) is called with the padding mask, so it can reduce over real tokens."""
    cfg = tiny("rope")
    params = init_params(cfg, jax.random.key(11))
    seen = {}

    class CountReal:
        def bind(self, mask_BT):
            seen["mask"] = mask_BT
            return lambda site, layer, x: jnp.sum(mask_BT) if site == "v" else None

    mask = jnp.arange(12)[None].repeat(2, 0) >= jnp.array([[0], [4]])
    out = forward(params, tokens(), cfg, mask_BT=mask, capture=CountReal())
    np.testing.assert_array_equal(seen["mask"], mask)
    np.testing.assert_array_equal(out.captured["v"], [20, 20])


@pytest.mark.parametrize("position", SCHEMES)
def test_chunked_attention_equals_xla_values_and_gradients(position):
    """CPU's default attention (query chunks against their causal prefix, ragged last chunk) against
    jax.nn.dot_product_attention, with GQA, a window, left padding, and under remat and the scan."""
    from minimal_lm.model import CHUNK, attention_impl

    cfg = tiny(position, max_seq_len=2 * CHUNK + 30, layer_windows=(0, 40))
    T = 2 * CHUNK + 22
    assert attention_impl(cfg, T, cached=False) == ("chunked" if jax.default_backend() == "cpu" else None)
    assert attention_impl(cfg, T, cached=True) is None and attention_impl(cfg, CHUNK, cached=False) is None
    params = init_params(cfg, jax.random.key(11))
    toks = tokens(T=T)
    mask = jnp.ones(toks.shape, bool).at[1, :9].set(False)

    def loss(p, c, m):
        return jnp.mean(forward(p, toks, c, mask_BT=m).logits ** 2)

    for m in (None, mask):
        ref_val, ref_grad = jax.value_and_grad(loss)(params, cfg.replace(attention_impl="xla"), m)
        for variant in (cfg.replace(attention_impl="chunked"), cfg.replace(attention_impl="chunked", remat="full",
                                                                            scan_layers=False)):
            val, grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, variant, m)
            np.testing.assert_allclose(val, ref_val, rtol=1e-5)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad, ref_grad)


def test_chunked_attention_with_a_cache_is_refused_by_name():
    from minimal_lm import ConfigError

    cfg = tiny(attention_impl="chunked")
    params = init_params(cfg, jax.random.key(12))
    with pytest.raises(ConfigError, match="attention_impl='chunked'"):
        forward(params, tokens(T=4), cfg, cache=init_cache(cfg, 2, 8))


@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
def test_dense_gradients_equal_the_plain_matmul(out_dtype):
    """minimal_lm.model.dense (on CPU a custom VJP with a contiguous x^T) differentiates like jnp.matmul, in
    float32 and with bf16 inputs accumulating in float32 (the logits)."""
    from minimal_lm.model import dense

    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    w = jax.random.normal(jax.random.key(1), (8, 3))
    for dt in (jnp.float32, jnp.bfloat16):
        xs, ws = x.astype(dt), w.astype(dt)

        def f(mm):
            return jax.grad(lambda a, b: jnp.sum(jnp.sin(mm(a, b).astype(jnp.float32))), argnums=(0, 1))(xs, ws)

        got = jax.jit(lambda: f(lambda a, b: dense(a, b, out_dtype)))()
        ref = f(lambda a, b: jnp.matmul(a, b, preferred_element_type=out_dtype))
        for g, r in zip(got, ref):
            assert g.dtype == r.dtype
            tol = 1e-5 if dt == jnp.float32 else 3e-2
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32), rtol=tol, atol=tol)

"""run_with_cache against a plain forward capture, its memory limit, and activation patching: a full patch
reproduces the clean run, an empty one changes nothing, one head at one position changes only what comes
after it; padding of either run is realigned by real-token position."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm import SITES, CacheTooLarge, ModelConfig, Patch, forward, generate, init_params, run_with_cache
from minimal_lm.hooks import cache_bytes
from minimal_lm.model import SCORE_SITES
from probes.disrupt import chain

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, max_seq_len=64,
                  init_std=0.2)
L, H, K, E, D = CFG.num_layers, CFG.num_heads, CFG.kv_heads, CFG.dim_per_head, CFG.d_model
B, T = 2, 10


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def clean():
    return np.asarray(jax.random.randint(jax.random.key(1), (B, T), 0, CFG.vocab_size))


@pytest.fixture(scope="module")
def corrupt(clean):
    return (clean + 5) % CFG.vocab_size


def _capture_all(site, layer, x):
    return x


@jax.jit
def plain_capture(params, tokens_BT):
    return forward(params, tokens_BT, CFG, capture=_capture_all)


@jax.jit
def patched(params, tokens_BT, mask_BT, hook):
    """Logits under `hook`, and every non-score site after it."""
    out = forward(params, tokens_BT, CFG, mask_BT=mask_BT, intervention=hook, capture=_capture_all)
    return out.logits, out.captured


def left_pad(tokens_BT, pads):
    """Row b after pads[b] padding slots (id 0), all rows as long as the longest: rows padded less end in
    padding too (any pattern of padding is allowed). Returns the tokens and the mask of real tokens."""
    T_, n = tokens_BT.shape[1], tokens_BT.shape[1] + max(pads)
    out, mask = np.zeros((len(pads), n), np.int32), np.zeros((len(pads), n), bool)
    for b, p in enumerate(pads):
        out[b, p:p + T_], mask[b, p:p + T_] = tokens_BT[b], True
    return out, mask


def test_run_with_cache_equals_a_plain_forward_capture(params, clean):
    logits, cache = run_with_cache(params, clean, CFG, sites=SITES)
    ref = plain_capture(params, jnp.asarray(clean))
    np.testing.assert_allclose(logits, ref.logits, rtol=1e-5, atol=1e-5)
    assert set(cache) == set(SITES)
    for site in set(SITES) - set(SCORE_SITES):
        np.testing.assert_allclose(cache[site], ref.captured[site], rtol=1e-5, atol=1e-5, err_msg=site)
    assert cache["attn_probs"].shape == (L, B, H, T, T)
    np.testing.assert_allclose(cache["attn_probs"].sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(np.asarray(cache["attn_probs"]), k=1) == 0), "causal pattern"
    # a subset of layers is the same rows, scanned or unrolled
    for cfg in (CFG, CFG.replace(scan_layers=False)):
        _, sub = run_with_cache(params, clean, cfg, sites=("q", "resid"), layers=[2, 0])
        assert set(sub) == {"q", "resid"} and sub["q"].shape == (2, B, T, H, E)
        np.testing.assert_allclose(sub["resid"], np.asarray(ref.captured["resid"])[[0, 2]], rtol=1e-5, atol=1e-5)


def test_a_subset_of_layers_holds_only_those_layers():
    """XLA's memory analysis: caching one layer's resid costs about one layer's bytes over the plain
    forward, not every layer's (the scan carries a buffer of the kept layers only)."""
    from minimal_lm.hooks import _run_with_cache

    cfg = CFG.replace(num_layers=6, d_model=64, max_seq_len=128)
    p = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    toks = jax.ShapeDtypeStruct((4, 128), jnp.int32)
    layer_bytes = 4 * 128 * 64 * 4

    def total(layers):
        m = _run_with_cache.lower(p, toks, None, cfg=cfg, sites=("resid",), layers=layers).compile()
        m = m.memory_analysis()
        return m.temp_size_in_bytes + m.output_size_in_bytes

    plain = jax.jit(lambda p, t: forward(p, t, cfg).logits).lower(p, toks).compile().memory_analysis()
    plain = plain.temp_size_in_bytes + plain.output_size_in_bytes
    assert total((2,)) - plain < 1.5 * layer_bytes, (total((2,)) - plain, layer_bytes)
    assert total(None) - plain > 5 * layer_bytes


def test_run_with_cache_default_sites_skip_the_score_path(params, clean):
    _, cache = run_with_cache(params, clean, CFG)
    assert set(cache) == set(SITES) - set(SCORE_SITES)


def test_memory_is_computed_first_and_refused_above_the_limit(params, clean):
    need = cache_bytes(params, clean, CFG, sites=("resid", "q"))
    assert need == L * B * T * (D + H * E) * 4
    with pytest.raises(CacheTooLarge, match=rf"would take .*\({need} bytes\).*pass max_bytes={need}"):
        run_with_cache(params, clean, CFG, sites=("resid", "q"), max_bytes=need - 1)
    _, cache = run_with_cache(params, clean, CFG, sites=("resid", "q"), max_bytes=need)
    assert sum(a.nbytes for a in cache.values()) == need
    with pytest.raises(ValueError, match="sites"):
        run_with_cache(params, clean, CFG, sites=("hook_q",))
    with pytest.raises(ValueError, match="layers"):
        run_with_cache(params, clean, CFG, layers=[L])


def test_padded_cache_holds_the_unpadded_values(params, clean):
    tokens, mask = left_pad(clean, [3, 0])
    _, cache = run_with_cache(params, tokens, CFG, sites=("k",), mask_BT=mask)
    _, ref = run_with_cache(params, clean, CFG, sites=("k",))
    np.testing.assert_allclose(np.asarray(cache["k"])[:, mask], np.asarray(ref["k"]).reshape(L, B * T, K, E),
                               rtol=1e-5, atol=1e-5)


ALL_ON = np.ones(L, bool)


def test_patching_every_layers_resid_reproduces_the_clean_logits(params, clean, corrupt):
    clean_logits, cache = run_with_cache(params, clean, CFG, sites=("resid",))
    full = Patch("resid", cache["resid"], layers=ALL_ON, positions=np.ones(T, bool))
    got, _ = patched(params, jnp.asarray(corrupt), None, full)
    np.testing.assert_allclose(got, clean_logits, rtol=1e-5, atol=1e-5)
    none = Patch("resid", cache["resid"], layers=~ALL_ON, positions=np.ones(T, bool))
    nowhere = Patch("resid", cache["resid"], layers=ALL_ON, positions=np.zeros(T, bool))
    base, _ = patched(params, jnp.asarray(corrupt), None, None)
    assert not np.allclose(base, clean_logits)
    for hook in (none, nowhere):  # patching nothing changes nothing, bit for bit
        np.testing.assert_array_equal(patched(params, jnp.asarray(corrupt), None, hook)[0], base)


@pytest.mark.parametrize("site, heads", [("q", H), ("v", K)])
def test_one_head_at_one_position_changes_only_what_follows(params, clean, corrupt, site, heads):
    """Layer 1, head 1, real position 6: the site differs from the corrupted run only there; logits before
    position 6 are bit-identical (causality), logits from 6 on change."""
    _, cache = run_with_cache(params, clean, CFG, sites=(site,))
    layer, head, pos = 1, 1, 6
    hook = Patch(site, cache[site], layers=np.arange(L) == layer, heads=np.arange(heads) == head,
                 positions=np.arange(T) == pos)
    base, base_sites = patched(params, jnp.asarray(corrupt), None, None)
    got, got_sites = patched(params, jnp.asarray(corrupt), None, hook)
    base, got = np.asarray(base), np.asarray(got)
    np.testing.assert_array_equal(got[:, :pos], base[:, :pos])
    assert (np.abs(got[:, pos:] - base[:, pos:]).max(-1) > 1e-6).all(), "every later position changes"
    changed = np.asarray(got_sites[site][layer]) != np.asarray(base_sites[site][layer])
    assert changed[:, pos, head].all() and changed.sum() == changed[:, pos, head].sum()
    np.testing.assert_allclose(np.asarray(got_sites[site][layer])[:, pos, head],
                               np.asarray(cache[site][layer])[:, pos, head], rtol=1e-6)
    np.testing.assert_array_equal(got_sites[site][0], base_sites[site][0])


def test_padding_is_realigned_by_real_token_position(params, clean, corrupt):
    """The clean run unpadded or padded one way, the corrupted run padded another way: the full resid patch
    still gives the clean logits at every real token, and padding slots are never written."""
    clean_logits, cache = run_with_cache(params, clean, CFG, sites=("resid",))
    tokens, mask = left_pad(corrupt, [0, 4])
    got, sites = patched(params, jnp.asarray(tokens), jnp.asarray(mask), Patch("resid", cache["resid"]))
    np.testing.assert_allclose(np.asarray(got)[mask], np.asarray(clean_logits).reshape(B * T, -1),
                               rtol=1e-5, atol=1e-5)
    base = patched(params, jnp.asarray(tokens), jnp.asarray(mask), None)[1]["resid"]
    # layer 0's padding slots are computed before any patch reaches them: equal only if never written
    np.testing.assert_array_equal(np.asarray(sites["resid"])[0][~mask], np.asarray(base)[0][~mask])
    ctokens, cmask = left_pad(clean, [5, 1])
    _, padded_cache = run_with_cache(params, ctokens, CFG, sites=("resid",), mask_BT=cmask)
    hook = Patch("resid", padded_cache["resid"], source_mask=cmask)
    got = np.asarray(patched(params, jnp.asarray(tokens), jnp.asarray(mask), hook)[0])
    np.testing.assert_allclose(got[mask], np.asarray(clean_logits).reshape(B * T, -1), rtol=1e-5, atol=1e-5)


def test_attention_pattern_patches_realign_queries_and_keys(params, clean, corrupt):
    """attn_probs saved from one padding layout, patched into the same tokens laid out another way, change
    nothing; from the clean prompt they do change the corrupted run."""
    tokens, mask = left_pad(clean, [2, 0])
    _, cache = run_with_cache(params, tokens, CFG, sites=("attn_probs",), mask_BT=mask)
    other, omask = left_pad(clean, [0, 3])
    base = patched(params, jnp.asarray(other), jnp.asarray(omask), Patch("attn_probs", cache["attn_probs"],
                                                                         layers=~ALL_ON, source_mask=mask))[0]
    got = patched(params, jnp.asarray(other), jnp.asarray(omask),
                  Patch("attn_probs", cache["attn_probs"], layers=ALL_ON, source_mask=mask))[0]
    np.testing.assert_allclose(np.asarray(got)[omask], np.asarray(base)[omask], rtol=1e-5, atol=1e-5)
    _, clean_cache = run_with_cache(params, clean, CFG, sites=("attn_probs",))
    moved, kept = (patched(params, jnp.asarray(corrupt), None, Patch("attn_probs", clean_cache["attn_probs"],
                                                                   layers=layers))[0] for layers in (ALL_ON, ~ALL_ON))
    assert not np.allclose(moved, kept)


def test_generation_from_a_fully_patched_prompt_is_the_clean_generation(params, clean, corrupt):
    """Patching k, v and resid of every layer at prefill (generate's prompt, padded to its 32-token bucket)
    makes the corrupted prompt generate what the clean one does. Layer indices given as ints."""
    _, cache = run_with_cache(params, clean, CFG, sites=("k", "v", "resid"), layers=[0, 1, 2])
    hook = chain(*(Patch(s, cache[s], layers=np.arange(L)) for s in ("k", "v", "resid")))
    want = generate(params, CFG, clean.tolist(), 6)
    assert generate(params, CFG, corrupt.tolist(), 6) != want
    assert generate(params, CFG, corrupt.tolist(), 6, intervention=hook, intervene_on=Patch.scope) == want


def test_bad_patches_are_named(params, clean):
    _, cache = run_with_cache(params, clean, CFG, sites=("resid", "v"))
    with pytest.raises(ValueError, match="site='hook_q'"):
        Patch("hook_q", cache["resid"])
    with pytest.raises(ValueError, match="no head axis"):
        patched(params, jnp.asarray(clean), None, Patch("resid", cache["resid"], heads=np.ones(H, bool)))
    with pytest.raises(ValueError, match="2 heads"):
        patched(params, jnp.asarray(clean), None, Patch("v", cache["v"], heads=np.ones(H, bool)))
    with pytest.raises(ValueError, match="saved row"):
        patched(params, jnp.asarray(clean), None, Patch("resid", cache["v"]))
    with pytest.raises(ValueError, match="one entry per row"):
        patched(params, jnp.asarray(clean), None, Patch("resid", cache["resid"], layers=np.ones(L + 1, bool)))


def test_unhashable_hooks_that_are_not_pytrees_are_refused_with_a_fix():
    from minimal_lm import as_hook

    class Holder:
        __hash__ = None

        def __call__(self, site, layer, x):
            return x

    with pytest.raises(TypeError, match="flax.struct.dataclass"):
        as_hook(Holder())
    with pytest.raises(TypeError, match="flax.struct.dataclass"):
        generate(jax.eval_shape(lambda: 0), CFG, [[1]], 1, intervention=Holder())

"""Disruptions against a NumPy reference, through the model's hooks and cache, and against HF Llama with
the same edit applied to its post-RoPE q/k."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm import forward, from_pretrained, init_cache
from probes.disrupt import Chain, Disruption, SetDims, ablate, chain, disrupt, for_phase, tap


def reference(x, mask, select="massive", k=1, lam=None, replace="mean"):
    """Loops over examples, heads and dims; statistics over valid tokens only, in float64."""
    x64, out = np.asarray(x, np.float64), np.array(x, np.float64)
    for b in range(x.shape[0]):
        valid = np.asarray(mask[b], bool)
        xv = x64[b, valid]
        m = np.sqrt((xv ** 2).sum(0))
        for h in range(x.shape[2]):
            if lam is None:
                dims = np.argsort(-m[h] if select == "massive" else m[h], kind="stable")[:k]
            else:
                massive = m[h] > lam * m[h].mean()
                dims = np.flatnonzero(massive) if select == "massive" else \
                    np.argsort(m[h], kind="stable")[:massive.sum()]
            for d in dims:
                col = xv[:, h, d]
                value = {"mean": col.mean(), "zero": 0.0, "max": col.max(), "min": col.min()}[replace]
                out[b, valid, h, d] = value
    return out


def random_x(seed=0, B=3, T=10, H=4, E=16):
    """Random activations with a planted large column in some heads, and absurd values in padding."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, H, E)).astype(np.float32)
    x[:, :, 0, 13] *= 12.0
    x[:, :, 2, 5] *= 9.0
    x[1, :, 1, 3] *= 20.0
    mask = np.ones((B, T), bool)
    mask[0, :4] = False  # left padding
    mask[2, :7] = False
    x[~mask] = 1e4
    return x, mask


RULES = [dict(k=1), dict(k=3), dict(lam=3.0)]


@pytest.mark.parametrize("replace", ["mean", "zero", "max", "min"])
@pytest.mark.parametrize("select", ["massive", "non_massive"])
@pytest.mark.parametrize("rule", RULES, ids=["k1", "k3", "lam3"])
def test_ablate_matches_numpy_reference(select, replace, rule):
    x, mask = random_x()
    got = np.asarray(ablate(jnp.asarray(x), jnp.asarray(mask), select=select, replace=replace, **rule))
    want = reference(x, mask, select=select, replace=replace, k=rule.get("k", 1), lam=rule.get("lam"))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.all(got[~mask] == 1e4), "padding is left as it was"
    assert not np.array_equal(got[mask], x[mask]), "something was replaced"


def test_threshold_selection_is_per_example_and_per_head():
    x, mask = random_x()
    got = np.asarray(ablate(jnp.asarray(x), jnp.asarray(mask), lam=3.0, replace="zero"))
    changed = (got != x).any(1)  # [B, H, E]
    assert changed[:, 0, 13].all() and changed[:, 2, 5].all()
    assert changed[1, 1, 3] and not changed[0, 1, 3] and not changed[2, 1, 3]
    assert changed.sum() == 3 + 3 + 1


def test_bf16_activations_keep_their_dtype():
    x, mask = random_x()
    got = ablate(jnp.asarray(x, jnp.bfloat16), jnp.asarray(mask))
    assert got.dtype == jnp.bfloat16


# --- Through the model: one tiny random HF Llama, loaded by minimal_lm.from_pretrained, serves every test
# below (the parity tests run HF itself on it), so that compiled programs are shared.

def _hf_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    c = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rope_theta=500.0,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(c).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
        for layer in model.model.layers:  # a few strong q/k dims, so "massive" differs from "non_massive"
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                proj.weight.view(-1, 16, 64)[:, 6].mul_(4.0)
    return model


@pytest.fixture(scope="module")
def hf_pair(tmp_path_factory):
    """The HF model and ours, loaded from its save_pretrained directory by minimal_lm.from_pretrained."""
    model = _hf_llama()
    path = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(path)
    loaded = from_pretrained(path)
    return model, loaded.config, loaded.params


@pytest.fixture(scope="module")
def cfg(hf_pair):
    return hf_pair[1]


@pytest.fixture(scope="module")
def params(hf_pair):
    return hf_pair[2]


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 96, (3, 24)).astype(np.int32)
    mask = np.ones((3, 24), bool)
    mask[1, :6] = False
    mask[2, :15] = False
    return jnp.asarray(tokens), jnp.asarray(mask)


def _everything(s, i, x):
    return x


@functools.partial(jax.jit, static_argnames=("cfg",))  # the hook is a traced pytree
def _forward(params, tokens, mask, cfg, hook=None):
    return forward(params, tokens, cfg, mask_BT=mask, intervention=hook, capture=_everything)


@pytest.fixture(scope="module")
def plain(params, batch, cfg):
    return _forward(params, *batch, cfg)


def test_identity_cases_leave_logits_bit_exact(params, batch, cfg):
    """k=0 and no sites trace to the very program of the intact model, so the logits are bit-identical."""
    program = lambda hook: str(jax.make_jaxpr(lambda p: forward(p, batch[0], cfg, mask_BT=batch[1],
                                                                intervention=hook).logits)(params))
    assert program(disrupt(sites=())) == program(None) == program(disrupt(k=0)) != program(disrupt())
    x, mask = random_x()
    for hook in (disrupt(sites="v"), disrupt(layers=(5,))):
        np.testing.assert_array_equal(hook.bind(jnp.asarray(mask))("q", jnp.int32(1), jnp.asarray(x)), x)


def test_site_receives_reference_ablation_with_forward_mask(params, batch, cfg, plain):
    """Layer 0's q and k are the clean ones with the reference edit over each example's valid tokens."""
    mask = np.asarray(batch[1])
    out = _forward(params, *batch, cfg, hook=disrupt(k=2, replace="max"))
    assert not np.allclose(out.logits, plain.logits)
    for site in ("q", "k"):
        want = reference(np.asarray(plain.captured[site][0]), mask, k=2, replace="max")
        np.testing.assert_allclose(np.asarray(out.captured[site][0])[mask], want[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.captured["v"][0], plain.captured["v"][0])


def test_layers_select_under_scan_and_unrolled(params, batch, cfg, plain):
    hook = disrupt(layers="1", replace="zero")
    scanned = _forward(params, *batch, cfg, hook=hook)
    unrolled = _forward(params, *batch, cfg.replace(scan_layers=False), hook=hook)
    np.testing.assert_allclose(scanned.logits, unrolled.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scanned.captured["q"][0], plain.captured["q"][0])
    assert not np.allclose(scanned.captured["q"][1], plain.captured["q"][1])


@functools.partial(jax.jit, static_argnames=("cfg",))
def _prefill_then_steps(params, tokens, mask, cfg, hook, decode_hooks):
    """Prefill the cache with the prompt under `hook`, then one decode step of a fixed token per decode
    hook, each from that cache; q and k captured."""
    B, T = tokens.shape
    cap = lambda s, i, x: x if s in ("q", "k") else None
    pre = forward(params, tokens, cfg, mask_BT=mask, cache=init_cache(cfg, B, T + 2), intervention=hook,
                  capture=cap, last_only=True)
    nxt, pos = jnp.full((B, 1), 7, jnp.int32), mask.sum(1, keepdims=True).astype(jnp.int32)
    return pre, [forward(params, nxt, cfg, positions_BT=pos, cache=pre.cache, intervention=h, capture=cap)
                 for h in decode_hooks]


def test_prefill_scope_ablates_cached_keys_but_not_decode_qk(params, batch, cfg):
    tokens, mask = batch
    prefill_only, every = disrupt(replace="zero", scope="prefill"), disrupt(replace="zero", scope="all")
    assert for_phase(prefill_only, "decode") is None and for_phase(prefill_only, "prefill") is prefill_only
    assert for_phase(every, "decode") is every
    decode_only = disrupt(scope="decode")
    assert for_phase(decode_only, "prefill") is None and for_phase(decode_only, "decode") is decode_only
    pre, (dec, dec_all) = _prefill_then_steps(params, tokens, mask, cfg, prefill_only,
                                              (for_phase(prefill_only, "decode"), for_phase(every, "decode")))
    valid, T = np.asarray(mask), tokens.shape[1]
    cached = np.asarray(pre.cache.k_LBSKE[:, :, :T])
    np.testing.assert_array_equal(cached[:, valid], np.asarray(pre.captured["k"])[:, valid])
    for b in range(tokens.shape[0]):  # each example's cached keys hold its zeroed column in every layer and head
        assert (cached[:, b, valid[b]] == 0).all(axis=1).any(-1).all()
    for site in ("q", "k"):  # decode step under "prefill": untouched, so no zeroed entry
        assert (np.asarray(dec.captured[site]) != 0).all()
        assert (np.asarray(dec_all.captured[site]) == 0).any(-1).all(), "scope all zeroes a dim of every head"


def test_chain_composes_in_order_and_with_captures(params, batch, cfg, plain):
    a, b = disrupt(k=1, sites="q"), disrupt("non_massive", k=2, replace="zero", sites="q,k")
    x, mask = random_x()
    x, mask = jnp.asarray(x), jnp.asarray(mask)
    np.testing.assert_array_equal((a + b).bind(mask)("q", 0, x), b.bind(mask)("q", 0, a.bind(mask)("q", 0, x)))
    c = chain(a, b, tap("q_sq", lambda s, i, x: jnp.sum(x * x) if s == "q" else None),
              tap("raw", lambda s, i, x: x if s == "q" else None))
    assert isinstance(c, Chain) and len(c.steps) == 2 and len(c.taps) == 2
    out = jax.jit(lambda p: forward(p, batch[0], cfg, mask_BT=batch[1], **c.hooks()))(params)
    q0 = (a + b).bind(batch[1])("q", 0, plain.captured["q"][0])
    np.testing.assert_allclose(out.captured["q"]["raw"][0], q0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.captured["q"]["q_sq"], (out.captured["q"]["raw"] ** 2).sum((1, 2, 3, 4)),
                               rtol=1e-5)
    assert "(massive)" in c.describe() and "then" in c.describe() and "q_sq" in c.describe()
    assert c.scope == "prefill"
    with pytest.raises(ValueError, match="mixes scopes"):
        chain(a, disrupt(scope="all")).scope


def test_value_semantics_print_and_round_trip():
    d = disrupt("non_massive", lam=5.0, replace="min", sites="k", layers=[2, 0], scope="all")
    assert d == Disruption.from_dict(d.to_dict()) and hash(d) == hash(Disruption.from_dict(d.to_dict()))
    assert d.layers == (0, 2) and d.sites == ("k",) and d.k is None
    text = d.describe()
    assert "non-massive" in text and "lam=5" in text and "layers 0,2" in text and "every generated token" in text
    assert "top-1 largest-norm (massive)" in disrupt().describe() and "prefill" in disrupt().describe()
    assert "Disruption(select='non_massive'" in repr(d)


@pytest.mark.parametrize("kw, match", [
    (dict(select="big"), "select='big'"), (dict(replace="median"), "replace='median'"),
    (dict(k=2, lam=5.0), "one selection rule"), (dict(k=-1), "k=-1"), (dict(lam=0.0), "lam=0.0"),
    (dict(sites="q,attn_out"), "attn_out"), (dict(scope="both"), "scope='both': expected one of prefill, decode, all"),
    (dict(layers="a,b"), "layers='a,b'"), (dict(layers=[-1]), "layers"),
])
def test_bad_settings_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        disrupt(**kw)
    with pytest.raises(ValueError, match="SetDims site='attn_out': expected one of q, k"):
        SetDims("attn_out", np.ones((1, 1, 1), bool))
    with pytest.raises(ValueError, match="unknown key"):
        Disruption.from_dict({"selct": "massive"})



def test_k_larger_than_head_dim_is_an_error(params, batch, cfg):
    with pytest.raises(ValueError, match="head_dim=16"):
        _forward(params, *batch, cfg, hook=disrupt(k=17))


# --- Parity with Hugging Face: the same edit applied to HF's post-RoPE q and k (before the GQA repeat). ---

def _hf_disrupted_logits(model, tokens, mask, **edit):
    """HF logits with `reference(**edit)` applied to every layer's post-RoPE query and key states, through a
    custom function in transformers' attention registry that then runs HF's eager attention."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.models.llama.modeling_llama import eager_attention_forward

    def attention(module, query, key, value, attention_mask, **kw):
        def edited(x_BHTE):
            x_BTHE = x_BHTE.transpose(1, 2).numpy()
            return torch.from_numpy(reference(x_BTHE, mask, **edit).astype(np.float32)).transpose(1, 2)
        return eager_attention_forward(module, edited(query), edited(key), value, attention_mask, **kw)

    AttentionInterface.register("disrupt_reference", attention)
    AttentionMaskInterface.register("disrupt_reference", eager_mask)
    model.config._attn_implementation = "disrupt_reference"
    try:
        positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
        with torch.no_grad():
            return model(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                         position_ids=torch.tensor(positions)).logits.numpy()
    finally:
        model.config._attn_implementation = "eager"


@pytest.mark.parametrize("hook, edit", [
    (disrupt(k=1), dict()),
    (disrupt(k=2, replace="max"), dict(k=2, replace="max")),
    (disrupt("non_massive", lam=2.5, replace="min"), dict(select="non_massive", lam=2.5, replace="min")),
], ids=["massive-k1-mean", "massive-k2-max", "non_massive-lam-min"])
def test_disrupted_logits_match_hf_with_the_same_edit(hf_pair, batch, plain, hook, edit):
    model, cfg, params = hf_pair
    tokens, mask = map(np.asarray, batch)
    want = _hf_disrupted_logits(model, tokens, mask, **edit)
    got = np.asarray(_forward(params, *batch, cfg, hook=hook).logits)
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(plain.logits)[mask] - want[mask]).max() > 1e-2, "the edit changes HF's logits"

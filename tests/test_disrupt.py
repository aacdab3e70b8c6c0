"""Disruptions against a NumPy reference, through the model's hooks and cache, and against HF Llama with
the same edit applied to its post-RoPE q/k."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm import ModelConfig, forward, init_cache, init_params
from probes.disrupt import Chain, Disruption, ablate, chain, disrupt, for_phase, tap

CFG = ModelConfig(vocab_size=96, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  max_seq_len=64, init_std=0.2)


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


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, CFG.vocab_size, (3, 14)).astype(np.int32)
    mask = np.ones((3, 14), bool)
    mask[0, :5] = False
    mask[2, :9] = False
    return jnp.asarray(tokens), jnp.asarray(mask)


def _everything(s, i, x):
    return x


@functools.partial(jax.jit, static_argnames="hook")
def _forward(params, tokens, mask, hook=None):
    return forward(params, tokens, CFG, mask_BT=mask, intervention=hook, capture=_everything)


def _raw(params, tokens, mask):
    return _forward(params, tokens, mask)


def _run(params, batch, hook):
    return _forward(params, *batch, hook=hook)


def test_identity_cases_leave_logits_bit_exact(params, batch):
    plain = _raw(params, *batch).logits
    for hook in (disrupt(k=0), disrupt(sites=()), disrupt(sites="v", layers=(5,))):
        np.testing.assert_array_equal(np.asarray(_run(params, batch, hook).logits), np.asarray(plain), str(hook))
    for hook in (disrupt(), disrupt("non_massive", k=2), disrupt(replace="zero", sites="k")):
        assert not np.allclose(_run(params, batch, hook).logits, plain), hook.describe()


def test_site_receives_reference_ablation_with_forward_mask(params, batch):
    """Layer 0's q and k are the clean ones with the reference edit over each example's valid tokens."""
    tokens, mask = batch
    clean = _raw(params, tokens, mask).captured
    out = _run(params, batch, disrupt(k=2, replace="max"))
    for site in ("q", "k"):
        want = reference(np.asarray(clean[site][0]), np.asarray(mask), k=2, replace="max")
        valid = np.asarray(mask)
        np.testing.assert_allclose(np.asarray(out.captured[site][0])[valid], want[valid], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out.captured["v"][0], clean["v"][0])


def test_layers_select_under_scan_and_unrolled(params, batch):
    hook = disrupt(layers="1", replace="zero")
    scanned = _run(params, batch, hook)
    unrolled = forward(params, batch[0], CFG.replace(scan_layers=False), mask_BT=batch[1], intervention=hook,
                       capture=lambda s, i, x: x)
    clean = _raw(params, *batch)
    np.testing.assert_allclose(scanned.logits, unrolled.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(scanned.captured["q"][0], clean.captured["q"][0])
    assert not np.allclose(scanned.captured["q"][1], clean.captured["q"][1])


def _prefill_then_step(params, tokens, mask, hook, phase_hooks=True):
    """Prefill the cache with the prompt, then one decode step of a fixed token; hooks as generation applies them."""
    B, T = tokens.shape
    cache = init_cache(CFG, B, T + 4)
    cap = lambda s, i, x: x if s in ("q", "k") else None
    pre = forward(params, tokens, CFG, mask_BT=mask, cache=cache, intervention=hook, capture=cap, last_only=True)
    nxt = jnp.full((B, 1), 7, jnp.int32)
    pos = mask.sum(1, keepdims=True).astype(jnp.int32)
    dec_hook = for_phase(hook, "decode") if phase_hooks else hook
    dec = forward(params, nxt, CFG, positions_BT=pos, cache=pre.cache, intervention=dec_hook, capture=cap)
    return pre, dec


def test_prefill_scope_ablates_cached_keys_but_not_decode_qk(params, batch):
    tokens, mask = batch
    zero = disrupt(replace="zero", scope="prefill")
    pre0, dec0 = _prefill_then_step(params, tokens, mask, None)
    pre1, dec1 = _prefill_then_step(params, tokens, mask, zero)
    assert for_phase(zero, "decode") is None and for_phase(zero, "prefill") is zero
    T = tokens.shape[1]
    k0, k1 = np.asarray(pre0.cache.k_LBSKE[:, :, :T]), np.asarray(pre1.cache.k_LBSKE[:, :, :T])
    valid = np.asarray(mask)
    np.testing.assert_array_equal(k1[:, valid], np.asarray(pre1.captured["k"])[:, valid])
    assert not np.allclose(k0[:, valid], k1[:, valid]), "the cached prompt keys are the ablated ones"
    assert (k1[0][valid] == 0).any(axis=0).sum() >= CFG.kv_heads, "a zeroed column per KV head in layer 0"
    # Decode step: layer 0's q/k depend only on the new token, so they equal the clean run's: not ablated.
    for site in ("q", "k"):
        np.testing.assert_allclose(dec1.captured[site][0], dec0.captured[site][0], rtol=1e-6, atol=1e-6)
        assert (np.asarray(dec1.captured[site][0]) != 0).all()
    # Scope "all" does ablate the decode step (zero replacement of a one-token column shows).
    _, dec_all = _prefill_then_step(params, tokens, mask, disrupt(replace="zero", scope="all"))
    assert (np.asarray(dec_all.captured["q"][0]) == 0).any(-1).all()


def test_chain_composes_in_order_and_with_captures(params, batch):
    a, b = disrupt(k=1, sites="q"), disrupt("non_massive", k=2, replace="zero", sites="q,k")
    x, mask = random_x()
    x, mask = jnp.asarray(x), jnp.asarray(mask)
    both = (a + b).bind(mask)("q", 0, x)
    step = b.bind(mask)("q", 0, a.bind(mask)("q", 0, x))
    np.testing.assert_array_equal(both, step)
    c = chain(a, b, tap("q_sq", lambda s, i, x: jnp.sum(x * x) if s == "q" else None))
    assert isinstance(c, Chain) and len(c.steps) == 2 and len(c.taps) == 1
    out = forward(params, batch[0], CFG, mask_BT=batch[1], **c.hooks())
    want = forward(params, batch[0], CFG, mask_BT=batch[1], intervention=a + b,
                   capture=lambda s, i, x: x if s == "q" else None)
    np.testing.assert_allclose(out.logits, want.logits, rtol=1e-6)
    np.testing.assert_allclose(out.captured["q"]["q_sq"], (want.captured["q"] ** 2).sum((1, 2, 3, 4)), rtol=1e-5)
    assert "massive" in c.describe() and "then" in c.describe() and "q_sq" in c.describe()
    assert c.scope == "prefill"
    with pytest.raises(ValueError, match="mixes scopes"):
        chain(a, disrupt(scope="all")).scope


def test_value_semantics_print_and_round_trip():
    d = disrupt("non_massive", lam=5.0, replace="min", sites="k", layers=[2, 0], scope="all")
    assert d == Disruption.from_dict(d.to_dict()) and hash(d) == hash(Disruption.from_dict(d.to_dict()))
    assert d.layers == (0, 2) and d.sites == ("k",) and d.k is None
    text = d.describe()
    assert "non_massive" in text and "lam=5" in text and "layers 0,2" in text and "every forward" in text
    assert "top-1 largest" in disrupt().describe() and "prefill" in disrupt().describe()
    assert "Disruption(select='non_massive'" in repr(d)


@pytest.mark.parametrize("kw, match", [
    (dict(select="big"), "select='big'"), (dict(replace="median"), "replace='median'"),
    (dict(k=2, lam=5.0), "one selection rule"), (dict(k=-1), "k=-1"), (dict(lam=0.0), "lam=0.0"),
    (dict(sites="q,attn_out"), "attn_out"), (dict(scope="decode"), "scope='decode'"),
    (dict(layers="a,b"), "layers='a,b'"), (dict(layers=[-1]), "layers"),
])
def test_bad_settings_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        disrupt(**kw)
    with pytest.raises(ValueError, match="unknown key"):
        Disruption.from_dict({"selct": "massive"})


def test_k_larger_than_head_dim_is_an_error(params, batch):
    with pytest.raises(ValueError, match="head_dim=16"):
        _run(params, batch, disrupt(k=17))


# --- Parity with Hugging Face: the same edit applied to HF's post-RoPE q and k (before the GQA repeat). ---

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


def _to_ours(model):
    """Our params from HF Llama weights, by hand (HF Linear weights are [out, in])."""
    c = model.config
    L, D, H, K, E = c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    cfg = ModelConfig(vocab_size=c.vocab_size, d_model=D, num_layers=L, num_heads=H, num_kv_heads=K, head_dim=E,
                      mlp_dim=c.intermediate_size, max_seq_len=c.max_position_embeddings, rope_theta=500.0,
                      tie_embeddings=False, norm_eps=c.rms_norm_eps)
    w = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    per = lambda name, f: np.stack([f(w[f"model.layers.{i}.{name}.weight"]) for i in range(L)])
    layers = {"attn_norm": per("input_layernorm", lambda a: a), "mlp_norm": per("post_attention_layernorm", lambda a: a),
              "wq": per("self_attn.q_proj", lambda a: a.T.reshape(D, H, E)),
              "wk": per("self_attn.k_proj", lambda a: a.T.reshape(D, K, E)),
              "wv": per("self_attn.v_proj", lambda a: a.T.reshape(D, K, E)),
              "wo": per("self_attn.o_proj", lambda a: a.T.reshape(H, E, D)),
              "w_gate": per("mlp.gate_proj", lambda a: a.T), "w_up": per("mlp.up_proj", lambda a: a.T),
              "w_down": per("mlp.down_proj", lambda a: a.T)}
    return cfg, {"embed": w["model.embed_tokens.weight"], "layers": layers, "final_norm": w["model.norm.weight"],
                 "position": {}, "unembed": w["lm_head.weight"].T}


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
    (disrupt("non_massive", k=2, replace="zero"), dict(select="non_massive", k=2, replace="zero")),
    (disrupt(lam=2.5, replace="min", layers=None), dict(lam=2.5, replace="min")),
], ids=["massive-k1-mean", "non_massive-k2-zero", "massive-lam-min"])
def test_disrupted_logits_match_hf_with_the_same_edit(hook, edit):
    model = _hf_model()
    cfg, params = _to_ours(model)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 96, (3, 24)).astype(np.int32)
    mask = np.ones((3, 24), bool)
    mask[1, :6] = False
    mask[2, :15] = False
    want = _hf_disrupted_logits(model, tokens, mask, **edit)
    got = np.asarray(jax.jit(lambda p, t, m: forward(p, t, cfg, mask_BT=m, intervention=hook).logits)(
        params, tokens, mask))
    plain = np.asarray(forward(params, tokens, cfg, mask_BT=mask).logits)
    np.testing.assert_allclose(got[mask], want[mask], rtol=1e-4, atol=1e-4)
    assert np.abs(plain[mask] - want[mask]).max() > 1e-2, "the edit changes HF's logits"


@functools.lru_cache(maxsize=1)
def _hf_model():
    return _hf_llama()

"""Hooks are traced values: new hook values of the same structure (other dims, other patches, other layer
masks) run through forward (jitted) and generate without compiling again; a hook on one layer costs about
what the plain forward costs, not an extra pass."""
import jax
import numpy as np
import pytest

from minimal_lm import ModelConfig, Patch, forward, generate, init_params, run_with_cache
from minimal_lm.generate import _decode, _prefill
from minimal_lm.hooks import Fn
from probes.disrupt import SetDims, disrupt

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, max_seq_len=64,
                  init_std=0.2)
L, H, K, E = CFG.num_layers, CFG.num_heads, CFG.kv_heads, CFG.dim_per_head
B, T = 2, 12


class Compiles:
    """Counts XLA compilations of functions named `name` (jax.monitoring's backend-compile event)."""

    def __init__(self, name):
        self.name, self.count = name, 0

    def _listen(self, event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration" and kw.get("fun_name") == f"jit({self.name})":
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


@pytest.fixture(scope="module")
def params():
    return jax.jit(init_params, static_argnums=0)(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def toks():
    return jax.random.randint(jax.random.key(1), (B, T), 0, CFG.vocab_size)


def dim_selections(n=5):
    """n different choices of dims ([L, heads, head_dim] bool) and stored values for q."""
    rng = np.random.default_rng(0)
    return [SetDims("q", rng.random((L, H, E)) < 0.2, rng.normal(size=(L, H, E)).astype(np.float32))
            for _ in range(n)]


def patches(params, n=5):
    """n patches of resid from n different clean prompts, each at another layer and position."""
    out = []
    for i in range(n):
        clean = jax.random.randint(jax.random.key(10 + i), (B, T), 0, CFG.vocab_size)
        _, cache = run_with_cache(params, clean, CFG, sites=("resid",))
        out.append(Patch("resid", cache["resid"], layers=np.arange(L) == i % L, positions=np.arange(T) == i + 2))
    return out


def forward_logits(params, tokens_BT, hook):
    return forward(params, tokens_BT, CFG, intervention=hook).logits


@pytest.mark.parametrize("make", [dim_selections, patches], ids=["dims", "patches"])
def test_forward_compiles_once_for_five_hook_values(params, toks, make):
    hooks = make() if make is dim_selections else make(params)
    run = jax.jit(forward_logits)
    before = run._cache_size()  # jit wrappers of one function share its cache: count what this test adds
    with Compiles("forward_logits") as c:
        outs = [np.asarray(run(params, toks, h)) for h in hooks]
    assert run._cache_size() - before == 1 and c.count == 1, (run._cache_size() - before, c.count)
    plain = np.asarray(run_plain(params, toks))
    assert all(not np.array_equal(o, plain) for o in outs), "every hook value changes the logits"
    assert len({o.tobytes() for o in outs}) == len(outs), "and each one differently"


def test_disruption_thresholds_and_layers_are_traced(params, toks):
    """Disruption's lam and its layer indices are leaves: 5 thresholds x layers compile once."""
    run = jax.jit(forward_logits)
    hooks = [disrupt(lam=lam, layers=(i % L,)) for i, lam in enumerate((1.2, 1.3, 1.4, 1.5, 1.6))]
    before = run._cache_size()
    with Compiles("forward_logits") as c:
        outs = [np.asarray(run(params, toks, h)) for h in hooks]
    assert run._cache_size() - before == 1 and c.count == 1
    for h, o in [(hooks[0], outs[0]), (hooks[-1], outs[-1])]:  # each call used its own lam and layer
        np.testing.assert_allclose(o, forward_logits(params, toks, h), rtol=1e-5, atol=1e-5)
    assert len({o.tobytes() for o in outs}) > 2


@jax.jit
def run_plain(params, tokens_BT):
    return forward(params, tokens_BT, CFG).logits


PROMPTS = [[5, 9, 11, 3, 7, 2, 8], [4, 4, 6, 1, 9, 13, 2, 2, 5, 7]]


@pytest.mark.parametrize("kind", ["dims", "patches"])
def test_generate_compiles_once_for_five_hook_values(params, kind):
    if kind == "dims":
        hooks = dim_selections()
    else:
        n = max(map(len, PROMPTS))
        tokens = np.array([p + [0] * (n - len(p)) for p in PROMPTS])
        mask = np.arange(n)[None] < np.array([[len(p)] for p in PROMPTS])
        hooks = []
        for i in range(5):  # clean prompts: the same ones with other tokens, right-padded as given by mask
            clean = np.where(mask, (tokens + 7 * (i + 1)) % CFG.vocab_size, 0)
            _, cache = run_with_cache(params, clean, CFG, sites=("v",), mask_BT=mask)
            hooks.append(Patch("v", cache["v"], heads=np.arange(K) == i % K, source_mask=mask))
    before = _prefill._cache_size(), _decode._cache_size()
    with Compiles("_prefill") as c, Compiles("_decode") as d:
        outs = [generate(params, CFG, PROMPTS, 8, intervention=h, intervene_on="prefill") for h in hooks]
    added = _prefill._cache_size() - before[0], _decode._cache_size() - before[1]
    assert added == (1, 1) and c.count == d.count == 1, (added, c.count, d.count)
    assert len({str(o) for o in outs}) > 1, "the hook values change what is generated"


def test_plain_function_hooks_compile_once_per_function(params, toks):
    """A plain function is held as a static Fn: the same function reuses the program, a new one compiles."""
    def flip_v(site, layer, x):
        return -x if site == "v" else x

    run = jax.jit(forward_logits)
    with Compiles("forward_logits") as c:
        run(params, toks, Fn(flip_v))
        run(params, toks, Fn(flip_v))
        assert c.count == 1
        run(params, toks, Fn(lambda s, l, x: x))
        assert c.count == 2


def test_one_layer_hooks_cost_no_extra_pass(params, toks):
    """XLA's flop count of the forward with a hook on one layer stays close to the plain forward's."""
    def flops(f, *args):
        cost = jax.jit(f).lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return cost["flops"]

    plain = flops(run_plain.__wrapped__, params, toks)
    one_layer = [disrupt(layers=(1,)), dim_selections(1)[0], patches(params, 1)[0]]
    for hook in one_layer:
        ratio = flops(forward_logits, params, toks, hook) / plain
        assert ratio < 1.3, (hook.describe(), ratio)

"""Scope "all" / "decode": generated tokens are disrupted at the dims selected on the sequence so far, with
the statistic over the sequence so far. Cached generation must give the tokens that an independent
reference gives: one full forward (no cache) of prompt + generated tokens whose hook computes, for every
position, the statistics of the sequence up to it (prompt positions: the whole prompt) by cumulative sums."""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from hf_testlib import random_params
from minimal_lm import ModelConfig, forward, generate
from minimal_lm.batching import left_pad
from probes.disrupt import Disruption, chain

CFG = ModelConfig(vocab_size=96, d_model=48, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=128,
                  init_std=0.2)
N_NEW = 10


REPLACE = ("mean", "zero", "max", "min")


@struct.dataclass
class PrefixReference:
    """Top-k dims and replacement per position from cumulative statistics (an implementation apart from
    ColumnStats); positions before `prompt_len` use the prompt's, or are left alone when not `prefill`.
    Every field is traced, so one compiled reference serves every case."""

    prompt_len: Any
    prefill: Any
    massive: Any  # select "massive" (True) or "non_massive"
    how: Any  # the replacement: an index into REPLACE
    mask_BT: Any = None

    @classmethod
    def of(cls, prompt_len, prefill, select, replace):
        return cls(jnp.int32(prompt_len), jnp.bool_(prefill), jnp.bool_(select == "massive"),
                   jnp.int32(REPLACE.index(replace)))

    def bind(self, mask_BT):
        return self.replace(mask_BT=mask_BT)

    def __call__(self, site, layer, x_BTHE):
        if site not in ("q", "k"):
            return x_BTHE
        T = x_BTHE.shape[1]
        m_BT = self.mask_BT.astype(bool)
        w_BT11 = m_BT[:, :, None, None]
        x = x_BTHE.astype(jnp.float32)
        upto_T = jnp.maximum(jnp.arange(T), self.prompt_len - 1)
        sq = jnp.cumsum(jnp.where(w_BT11, x * x, 0.0), axis=1)[:, upto_T]
        total = jnp.cumsum(jnp.where(w_BT11, x, 0.0), axis=1)[:, upto_T]
        n = jnp.cumsum(m_BT, axis=1)[:, upto_T][:, :, None, None]
        hi = jax.lax.cummax(jnp.where(w_BT11, x, -jnp.inf), axis=1)[:, upto_T]
        lo = jax.lax.cummin(jnp.where(w_BT11, x, jnp.inf), axis=1)[:, upto_T]
        norm = jnp.sqrt(sq)
        order = jnp.argsort(jnp.where(self.massive, -norm, norm), axis=-1, stable=True)
        chosen = jax.nn.one_hot(order[..., 0], x.shape[-1], dtype=bool)
        value = jnp.stack([total / jnp.maximum(n, 1), jnp.zeros_like(x), hi, lo])[self.how]
        edit = chosen & w_BT11 & (self.prefill | (jnp.arange(T) >= self.prompt_len))[None, :, None, None]
        return jnp.where(edit, value, x).astype(x_BTHE.dtype)


@pytest.fixture(scope="module")
def setup():
    params = random_params(CFG, std=0.2)
    rng = np.random.RandomState(0)
    prompts = [rng.randint(3, CFG.vocab_size, n).tolist() for n in (23, 9)]
    return params, prompts


_forward = jax.jit(forward, static_argnames="cfg")


def reference_logits(params, prompts, gen, hook):
    tokens_BP, mask_BP = left_pad(prompts)
    tokens = np.concatenate([tokens_BP, np.asarray(gen, np.int32)], axis=1)
    mask = np.concatenate([mask_BP, np.ones((len(prompts), len(gen[0])), bool)], axis=1)
    out = _forward(params, jnp.asarray(tokens), CFG, mask_BT=jnp.asarray(mask), intervention=hook)
    P = tokens_BP.shape[1]
    return np.asarray(out.logits[:, P - 1:-1]), P


@pytest.mark.parametrize("replace", REPLACE)
@pytest.mark.parametrize("scope", ["all", "decode"])
def test_cached_generation_equals_the_full_forward_with_prefix_statistics(setup, replace, scope):
    params, prompts = setup
    for select in ("massive", "non_massive"):
        hook = Disruption(select, 1, replace=replace, scope=scope)
        gen = generate(params, CFG, prompts, N_NEW, intervention=hook, intervene_on=scope)
        P = left_pad(prompts)[0].shape[1]
        ref = PrefixReference.of(P, scope == "all", select, replace)
        logits, _ = reference_logits(params, prompts, gen, ref)
        assert (logits.argmax(-1) == np.asarray(gen)).all(), (select, replace, scope)


@pytest.mark.parametrize("replace", ["mean", "max", "min"])
def test_all_edits_generated_tokens_unlike_prefill(setup, replace):
    """The old "all" equalled prefill for mean/max/min (one token's statistic is its own value): on the same
    tokens, the reference for "all" and the one for prefill-only must give other logits."""
    params, prompts = setup
    gen = generate(params, CFG, prompts, N_NEW, intervention=Disruption("massive", 1, replace=replace,
                                                                        scope="all"), intervene_on="all")
    P = left_pad(prompts)[0].shape[1]
    all_logits, _ = reference_logits(params, prompts, gen, PrefixReference.of(P, True, "massive", replace))
    prefill_only = Disruption("massive", 1, replace=replace, scope="prefill")

    @struct.dataclass
    class PromptOnly:
        """The prefill disruption on the prompt slots of the full sequence, generated tokens untouched."""
        mask_BT: Any = None

        def bind(self, mask_BT):
            return PromptOnly(mask_BT.at[:, P:].set(False))

        def __call__(self, site, layer, x):
            return prefill_only.apply(site, layer, x, self.mask_BT)

    prefill_logits, _ = reference_logits(params, prompts, gen, PromptOnly())
    assert np.abs(all_logits[:, 1:] - prefill_logits[:, 1:]).max() > 1e-3


def test_a_chain_carries_each_steps_history(setup):
    params, prompts = setup
    q_only = Disruption("massive", 1, sites=("q",), scope="all")
    k_only = Disruption("massive", 1, sites=("k",), scope="all")
    together = Disruption("massive", 1, sites=("q", "k"), scope="all")
    want = generate(params, CFG, prompts, N_NEW, intervention=together, intervene_on="all")
    assert generate(params, CFG, prompts, N_NEW, intervention=chain(q_only, k_only), intervene_on="all") == want
    with pytest.raises(ValueError, match="follows another edit"):
        chain(together, q_only).observer()


def test_descriptions_say_what_all_means():
    d = Disruption(scope="all")
    assert "sequence up to it" in d.describe()
    assert Disruption.from_dict(d.to_dict()) == d and "history" not in d.to_dict()

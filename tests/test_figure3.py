"""Figure 3's quantities as the paper computes them (answer alone under the disrupted model; word distinct-2
per answer, averaged) beside ours (intact model given the prompt; token distinct-2 pooled)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_testlib import random_params
from minimal_lm import ModelConfig, forward
from probes.disrupt import Disruption
from probes.scoring import answer_alone_perplexity, answer_perplexity, distinct_n, distinct_n_per_answer, words

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  max_seq_len=32, init_std=0.2)
ANSWER = "The pass key is 71432. I remember it well, and the key is what you asked for."


def test_identical_fluent_answers_are_diverse_per_answer_not_pooled():
    answers = [ANSWER] * 20
    assert distinct_n_per_answer(answers) == pytest.approx(distinct_n([words(ANSWER)]))
    assert distinct_n_per_answer(answers) > 0.9
    assert distinct_n([words(a) for a in answers]) < 0.1
    assert distinct_n_per_answer([ANSWER, "yes"]) == pytest.approx(distinct_n([words(ANSWER)]) / 2)
    assert distinct_n_per_answer(["the the the the"]) == pytest.approx(1 / 3) and distinct_n_per_answer([]) is None


def reference_perplexity(params, tokens, hook):
    logits = forward(params, jnp.asarray([tokens]), CFG, intervention=hook).logits[0]
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32), -1), np.float64)
    return float(np.exp(-np.mean([logp[t - 1, tokens[t]] for t in range(1, len(tokens))])))


def test_answer_alone_under_the_disruption_matches_a_reference_and_differs_from_intact():
    p = jax.tree.map(np.array, random_params(CFG, seed=0, std=0.2))
    p["layers"]["wq"][:, :, :, 3] *= 20.0  # a massive q and k dim in every head, so disrupting it matters
    p["layers"]["wk"][:, :, :, 3] *= 20.0
    rng = np.random.default_rng(0)
    answers = [rng.integers(0, 64, n).tolist() for n in (9, 5, 12)] + [[7]]
    prompts = [rng.integers(0, 64, 6).tolist() for _ in answers]
    hook = Disruption("massive", k=1)
    disrupted = answer_alone_perplexity(p, CFG, answers, intervention=hook, batch_size=3)
    intact = answer_alone_perplexity(p, CFG, answers, batch_size=3)
    assert disrupted[-1] is None and intact[-1] is None  # one token: nothing to predict
    for a, d, i in zip(answers[:-1], disrupted, intact):
        assert d == pytest.approx(reference_perplexity(p, a, hook), rel=1e-4)
        assert i == pytest.approx(reference_perplexity(p, a, None), rel=1e-4)
        assert abs(d - i) > 1e-3 * i, (d, i)  # float noise is ~1e-6
    given_prompt = answer_perplexity(p, CFG, prompts, answers, batch_size=3)
    assert all(abs(g - i) > 1e-3 * i for g, i in zip(given_prompt[:-1], intact[:-1]))

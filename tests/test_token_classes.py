"""Contextual / parametric token classes on a hand-built document, against a brute-force reference, and the
per-class losses of a tiny model (intact and disrupted) against a direct cross entropy."""
import collections

import jax
import numpy as np
import pytest

from minimal_lm import ModelConfig, forward
from minimal_lm.model import init_params
from probes import token_classes as tc
from probes.experiment import modes_for
from probes.token_classes import CONTEXTUAL as C
from probes.token_classes import IGNORE as I
from probes.token_classes import OTHER as O
from probes.token_classes import PARAMETRIC as P

EOS = 9


def train_counts(pairs: dict, vocab=10) -> tc.BigramCounts:
    """Counts holding exactly `pairs` ({(a, b): n})."""
    codes = {a * vocab + b: n for (a, b), n in pairs.items()}
    keys = np.array(sorted(codes), np.int64)
    return tc.BigramCounts(keys, np.array([codes[k] for k in keys], np.int64), vocab)


# frequent in training: (1, 2), (2, 3), (9, 1); rare: (2, 4); never: everything else
COUNTS = {(1, 2): 50, (2, 3): 20, (9, 1): 30, (2, 4): 3}
DOC = [1, 2, 3, 1, 2, 4, EOS, 1, 2, 1, 2]
#  t:   0  1  2  3  4  5   6   7  8  9   (predicting DOC[t + 1])
HAND = [P, P, O, C, O, O, P, P, O, C]
# t0 (1,2) first in the file, frequent; t1 (2,3) frequent; t2 (3,1) never seen in training; t3 (1,2) seen at t0;
# t4 (2,4) seen 3 times only; t5 (4,EOS) ends the file; t6 (EOS,1) starts the next file: never contextual,
# frequent; t7 (1,2) in the new file for the first time (the old file's (1,2) does not count); t8 (2,1);
# t9 (1,2) seen at t7.
PADDED = [0] * 7 + [5, 6, 5, 6]  # left padding, then (5,6) (6,5) (5,6)
PADDED_MASK = [False] * 7 + [True] * 4
PADDED_HAND = [I] * 7 + [O, O, C]


def test_hand_built_document():
    counts = train_counts(COUNTS | {(0, 0): 99, (0, 5): 99})
    tokens = np.array([DOC, PADDED])
    mask = np.array([[True] * 11, PADDED_MASK])
    got = tc.classify(tokens, counts, min_count=10, mask_BT=mask, eos_id=EOS)
    assert got.dtype == np.int8 and got.shape == (2, 10)
    assert got[0].tolist() == HAND
    assert got[1].tolist() == PADDED_HAND  # (0,0) and (0,5) are frequent, but padding is ignored
    # without document boundaries the second file's first (1,2) repeats the first file's
    whole = tc.classify(tokens[:1], counts, min_count=10)
    assert whole[0].tolist() == [P, P, O, C, O, O, P, C, O, C]
    # the same boundaries given as document ids; a higher threshold makes (2,3) "other"
    docs = np.array([[0] * 7 + [1] * 4])
    assert tc.classify(tokens[:1], counts, min_count=10, docs_BT=docs)[0].tolist() == HAND
    strict = tc.classify(tokens[:1], counts, min_count=25, eos_id=EOS)[0].tolist()
    assert strict == [P, O, O, C, O, O, P, P, O, C]
    assert tc.classify(tokens[:1], None, eos_id=EOS)[0].tolist() == [O, O, O, C, O, O, O, O, O, C]


def brute_force(tokens, counts: collections.Counter, min_count, mask, docs):
    B, T = tokens.shape
    out = np.full((B, T - 1), I)
    for b in range(B):
        for t in range(T - 1):
            if not (mask[b, t] and mask[b, t + 1]):
                continue
            pair = (tokens[b, t], tokens[b, t + 1])
            same = docs[b, t] == docs[b, t + 1]
            earlier = same and any(
                (tokens[b, s], tokens[b, s + 1]) == pair and mask[b, s] and mask[b, s + 1]
                and docs[b, s] == docs[b, s + 1] == docs[b, t] for s in range(t))
            out[b, t] = C if earlier else P if counts[pair] >= min_count else O
    return out


@pytest.mark.parametrize("seed", range(4))
def test_classify_matches_brute_force(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    V = 6
    monkeypatch.setattr(tc, "_CHUNK", 7)  # counts read in chunks: bigrams across chunk edges count once
    streams = [rng.integers(0, V, n) for n in (40, 1, 0, 23)]
    counter = collections.Counter(p for s in streams for p in zip(s[:-1], s[1:]))
    counts = tc.bigram_counts(streams, V)
    assert dict(zip(map(int, counts.codes), map(int, counts.counts))) == {a * V + b: n for (a, b), n in counter.items()}
    tokens = rng.integers(0, V, (3, 30))
    mask = rng.random((3, 30)) > 0.15
    docs = np.cumsum(rng.random((3, 30)) < 0.1, axis=1)
    got = tc.classify(tokens, counts, min_count=2, mask_BT=mask, docs_BT=docs)
    assert got.tolist() == brute_force(tokens, counter, 2, mask, docs).tolist()
    eos_docs = tc.documents(tokens, eos_id=0)
    got = tc.classify(tokens, counts, min_count=3, eos_id=0)
    assert got.tolist() == brute_force(tokens, counter, 3, np.ones_like(mask), eos_docs).tolist()


def test_bigram_counts_save_and_load(tmp_path):
    counts = tc.bigram_counts([np.array([1, 2, 1, 2, 3])], 4)
    counts.save(tmp_path / "c.npz")
    back = tc.BigramCounts.load(tmp_path / "c.npz")
    assert back.vocab_size == 4 and back.lookup([1, 2, 3, 0], [2, 1, 3, 0]).tolist() == [2, 1, 0, 0]
    assert tc.bigram_counts([], 4).lookup([1], [2]).tolist() == [0]


def test_class_losses_equal_a_direct_cross_entropy():
    cfg = ModelConfig(vocab_size=12, d_model=32, num_layers=1, num_heads=2, max_seq_len=32, position="rope")
    rng = np.random.default_rng(0)  # random params without compiling the initializer
    params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype),
                          jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0)))
    tokens = rng.integers(0, 4, (3, 24)).astype(np.int32)  # few symbols: many repeated bigrams
    tokens[:, [7, 15]] = EOS
    counts = tc.bigram_counts([rng.integers(0, 12, 400)], 12)
    modes = modes_for(["none", "massive"], top_k=1)  # non_massive differs from massive by a static field only
    got = tc.class_metrics(params, cfg, tokens, counts, modes, eos_id=EOS, min_count=4, batch_size=2)
    classes = tc.classify(tokens, counts, min_count=4, eos_id=EOS)
    assert {int(c) for c in np.unique(classes)} == {O, C, P}
    losses = {}
    for name, hook in modes.items():
        logits = np.asarray(jax.jit(lambda p, x, h: forward(p, x, cfg, intervention=h).logits)(params, tokens, hook),
                            np.float64)[:, :-1]  # the plain causal path (no mask), float64 log-softmax below
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, tokens[:, 1:, None].astype(np.int64), -1)[..., 0]
        hit = logits.argmax(-1) == tokens[:, 1:]
        for cname, code in (("contextual", C), ("parametric", P), ("other", O)):
            keep = classes == code
            row = got[name][cname]
            assert row["n"] == keep.sum()
            np.testing.assert_allclose(row["loss"], nll[keep].mean(), rtol=1e-5)
            assert row["acc"] == pytest.approx(hit[keep].mean())
        assert got[name]["all"]["n"] == classes.size
        np.testing.assert_allclose(got[name]["all"]["loss"], nll.mean(), rtol=1e-5)
        losses[name] = nll.mean()
    assert losses["massive"] != losses["none"]  # the disruption reached the model
    one = tc.class_metrics(params, cfg, tokens[:1], None, ["none"], eos_id=EOS, batch_size=2)  # compiled shape
    assert list(one) == ["none"] and one["none"]["parametric"] == {"loss": None, "acc": None, "n": 0}

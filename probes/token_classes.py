"""Contextual vs parametric next-token predictions on any tokenized text, without made-up items.

Each prediction position t of a row (target x[t+1] given x[..t]) gets a class:
- **contextual** when the bigram (x[t], x[t+1]) occurred earlier in the same document and the visible row
  (some s < t with x[s] = x[t], x[s+1] = x[t+1], both in t's document): the target can be copied from the
  context, as an induction head does (an identifier defined above, a name used before);
- **parametric** when it is not contextual but the bigram occurs at least `min_count` times in the training
  split: the model can only know it from its weights;
- **other**: neither (a rare bigram seen first here);
- IGNORE: x[t] or x[t+1] is padding (mask False).
A position whose target starts a new document (x[t] ends one) is never contextual.

Documents: `docs_BT` (a document id per token), or `eos_id` (a document ends with its <|endoftext|>, as
train.prepare and train.stdlib write them; the token after it starts the next), or else each row is one
document. A row that is a window of a corpus starts mid-document: "earlier" means earlier in the row, which
is what the model sees.

`class_metrics` is the measure: per mode (the intact model, "massive" and "non_massive" disruption of Q and
K, any hook of probes.experiment.modes_for) and class, the mean next-token loss (nats) and top-1 accuracy.
The disruption replaces a column by its statistic over the row's real tokens (the paper's prefill setting
applied to the whole row), so position t sees a mean that includes later tokens of its row.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from minimal_lm import ModelConfig
from minimal_lm.hooks import as_hook
from minimal_lm.model import forward

IGNORE, OTHER, CONTEXTUAL, PARAMETRIC = -1, 0, 1, 2
CLASSES = {"contextual": CONTEXTUAL, "parametric": PARAMETRIC, "other": OTHER}
_CHUNK = 1 << 24


@dataclasses.dataclass(frozen=True)
class BigramCounts:
    """How often each bigram (a, b) occurs in a token stream: sorted codes a * vocab_size + b and counts."""

    codes: np.ndarray  # int64, sorted, unique
    counts: np.ndarray  # int64
    vocab_size: int

    def lookup(self, a, b) -> np.ndarray:
        """Counts of the bigrams (a[i], b[i]) (0 for one never seen), shaped like a."""
        code = np.asarray(a, np.int64) * self.vocab_size + np.asarray(b, np.int64)
        if not len(self.codes):
            return np.zeros(code.shape, np.int64)
        at = np.minimum(np.searchsorted(self.codes, code), len(self.codes) - 1)
        return np.where(self.codes[at] == code, self.counts[at], 0)

    def save(self, path) -> None:
        with open(path, "wb") as f:
            np.savez(f, codes=self.codes, counts=self.counts, vocab_size=self.vocab_size)

    @classmethod
    def load(cls, path) -> "BigramCounts":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["codes"], z["counts"], int(z["vocab_size"]))


def bigram_counts(streams: Iterable[np.ndarray], vocab_size: int) -> BigramCounts:
    """Bigram counts of consecutive tokens within each 1-D token array of `streams` (e.g. the memmapped
    train shards, train.data.Shards(path, "train").arrays), read in chunks."""
    parts_codes, parts_counts = [], []
    for a in streams:
        for lo in range(0, max(len(a) - 1, 0), _CHUNK):
            chunk = np.asarray(a[lo:lo + _CHUNK + 1], np.int64)
            if chunk.size and (chunk.min() < 0 or chunk.max() >= vocab_size):
                raise ValueError(f"bigram_counts: token ids outside [0, {vocab_size})")
            c, n = np.unique(chunk[:-1] * vocab_size + chunk[1:], return_counts=True)
            parts_codes.append(c)
            parts_counts.append(n)
    if not parts_codes:
        return BigramCounts(np.zeros(0, np.int64), np.zeros(0, np.int64), vocab_size)
    codes, inverse = np.unique(np.concatenate(parts_codes), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(parts_counts), minlength=len(codes)).astype(np.int64)
    return BigramCounts(codes, counts, vocab_size)


def documents(tokens_BT, eos_id: int | None = None) -> np.ndarray:
    """A document id per token, int64 [B, T]: a document ends with `eos_id` (None: each row is one)."""
    tokens_BT = np.asarray(tokens_BT)
    if eos_id is None:
        return np.zeros(tokens_BT.shape, np.int64)
    is_eos = tokens_BT == eos_id
    return np.cumsum(is_eos, axis=1, dtype=np.int64) - is_eos


def classify(tokens_BT, counts: BigramCounts | None, *, min_count: int = 10, mask_BT=None, docs_BT=None,
             eos_id: int | None = None) -> np.ndarray:
    """The class of each prediction position, int8 [B, T - 1] (IGNORE, OTHER, CONTEXTUAL, PARAMETRIC);
    position t predicts tokens_BT[:, t + 1]. `counts` None: nothing is parametric. O(N log N)."""
    x = np.asarray(tokens_BT, np.int64)
    if x.ndim != 2:
        raise ValueError(f"classify: tokens_BT has shape {x.shape}, expected [B, T]")
    B, T = x.shape
    mask = np.ones((B, T), bool) if mask_BT is None else np.asarray(mask_BT, bool)
    docs = documents(x, eos_id) if docs_BT is None else np.asarray(docs_BT, np.int64)
    if mask.shape != x.shape or docs.shape != x.shape:
        raise ValueError(f"classify: mask {mask.shape} / docs {docs.shape} do not match tokens {x.shape}")
    out = np.full((B, max(T - 1, 0)), IGNORE, np.int8)
    if T < 2:
        return out
    a, b = x[:, :-1], x[:, 1:]
    valid = mask[:, :-1] & mask[:, 1:]
    inside = valid & (docs[:, :-1] == docs[:, 1:])  # bigrams within one document
    # contextual: the (row, document, bigram) key was seen at an earlier position; sort by key, then position
    row, pos = np.nonzero(inside)
    doc, first, second = docs[row, pos], a[row, pos], b[row, pos]
    order = np.lexsort((pos, second, first, doc, row))
    key = np.stack([row, doc, first, second])[:, order]
    repeat = np.zeros(len(order), bool)
    repeat[1:] = (key[:, 1:] == key[:, :-1]).all(0)
    contextual = np.zeros((B, T - 1), bool)
    contextual[row[order][repeat], pos[order][repeat]] = True
    if counts is not None and x.size and (x.min() < 0 or x[mask].max(initial=0) >= counts.vocab_size):
        raise ValueError(f"classify: token ids outside the counts' vocabulary [0, {counts.vocab_size})")
    frequent = (counts.lookup(a, b) >= min_count) if counts is not None else np.zeros(a.shape, bool)
    out[valid] = OTHER
    out[valid & frequent] = PARAMETRIC
    out[contextual] = CONTEXTUAL
    return out


@functools.partial(jax.jit, static_argnames=("cfg",))  # the intervention is a traced pytree hook
def _token_nll(params, tokens_BT, mask_BT, intervention, *, cfg):
    """-log p(x[t+1] | x[..t]) and whether x[t+1] is the top-1 prediction, [B, T - 1] each."""
    logits_BTV = forward(params, tokens_BT, cfg, mask_BT=mask_BT, intervention=intervention).logits[:, :-1]
    logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    target_BT = tokens_BT[:, 1:]
    nll_BT = -jnp.take_along_axis(logp_BTV, target_BT[..., None], axis=-1)[..., 0]
    return nll_BT, jnp.argmax(logits_BTV, axis=-1) == target_BT


def token_losses(params, cfg: ModelConfig, tokens_BT, *, mask_BT=None, intervention=None,
                 batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(nll, correct), numpy [B, T - 1]: each position's next-token loss and top-1 hit, with `intervention`
    (None: the intact model) over each row; rows run `batch_size` at a time (one compiled shape)."""
    tokens_BT = np.asarray(tokens_BT, np.int32)
    mask_BT = np.ones(tokens_BT.shape, bool) if mask_BT is None else np.asarray(mask_BT, bool)
    B = len(tokens_BT)
    hook = as_hook(intervention)
    nll, hit = [], []
    for lo in range(0, B, batch_size):
        rows = np.minimum(np.arange(lo, lo + batch_size), B - 1)  # the last batch repeats its last row
        n, c = _token_nll(params, jnp.asarray(tokens_BT[rows]), jnp.asarray(mask_BT[rows]), hook, cfg=cfg)
        keep = min(batch_size, B - lo)
        nll.append(np.asarray(n)[:keep])
        hit.append(np.asarray(c)[:keep])
    return np.concatenate(nll), np.concatenate(hit)


def summarize(nll_BT, correct_BT, classes_BT) -> dict:
    """{class: {"loss", "acc", "n"}} for contextual, parametric, other and all (every non-ignored position);
    loss and acc are None where n is 0."""
    out = {}
    for name, keep in [*((n, classes_BT == c) for n, c in CLASSES.items()), ("all", classes_BT != IGNORE)]:
        n = int(keep.sum())
        out[name] = {"loss": float(nll_BT[keep].mean()) if n else None,
                     "acc": float(correct_BT[keep].mean()) if n else None, "n": n}
    return out


def class_metrics(params, cfg: ModelConfig, tokens_BT, counts: BigramCounts | None, modes, *, mask_BT=None,
                  docs_BT=None, eos_id: int | None = None, min_count: int = 10, batch_size: int = 8) -> dict:
    """{mode: {class: {"loss", "acc", "n"}}}: next-token loss (nats) and top-1 accuracy of each class of
    `classify` (plus "all"), for each mode. `modes` maps a name to an intervention (None: the intact model),
    e.g. probes.experiment.modes_for(["none", "massive", "non_massive"], top_k=1), or is a list of such
    names (then modes_for with its defaults). `counts`: bigram_counts of the training split."""
    if not isinstance(modes, dict):
        from probes.experiment import modes_for

        modes = modes_for(modes)
    classes = classify(tokens_BT, counts, min_count=min_count, mask_BT=mask_BT, docs_BT=docs_BT, eos_id=eos_id)
    return {name: summarize(*token_losses(params, cfg, tokens_BT, mask_BT=mask_BT, intervention=hook,
                                          batch_size=batch_size), classes)
            for name, hook in modes.items()}

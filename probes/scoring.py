"""Scorers for the paper's tasks, the perplexity of a generated answer, and distinct-n diversity.

Each scorer is `(output, answer, **item extras) -> bool`. Yes/No answers are read from the first Yes/No
word, not by substring (the authors' substring scorer counts "not" as "no").
"""
from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from minimal_lm import ModelConfig, as_hook, forward

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_LETTER = re.compile(r"\(([A-E])\)|\b([A-E])\)|answer is:?\s*\(?([A-E])\b|^\s*\(?([A-E])\b(?![\w'])")


def contains(output: str, answer, **_) -> bool:
    """The answer (or any of a list of accepted answers) appears in the output, ignoring case."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    return any(str(a).lower() in output.lower() for a in answers)


def parse_number(text: str) -> float | None:
    """The last number in text ("1,000" is one thousand; a trailing period is punctuation)."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def last_number(output: str, answer, **_) -> bool:
    """GSM8K: the last number in the output equals the reference's final number."""
    got, want = parse_number(output), parse_number(str(answer))
    if want is None:
        raise ValueError(f"last_number: the reference answer {answer!r} holds no number")
    return got is not None and math.isclose(got, want, rel_tol=0, abs_tol=1e-6)


def first_yes_no(output: str) -> bool | None:
    """True for Yes, False for No, None when neither word appears ("not sure" is neither)."""
    m = _YES_NO.search(output)
    return None if m is None else m.group(1).lower() == "yes"


def as_bool(answer) -> bool:
    if isinstance(answer, bool):
        return answer
    text = str(answer).strip().lower()
    if text in ("yes", "true", "1"):
        return True
    if text in ("no", "false", "0"):
        return False
    raise ValueError(f"Yes/No answer {answer!r}: expected true/false or Yes/No")


def yes_no(output: str, answer, **_) -> bool:
    """The first Yes/No word of the output matches the answer."""
    got = first_yes_no(output)
    return got is not None and got == as_bool(answer)


def option(output: str, answer: str, options=(), **_) -> bool:
    """AQUA: the first option letter the output names ("(C)", "C)", "answer is C", a leading "C") is the
    answer; with no letter, the correct option's text appears and no other option's text does."""
    m = _LETTER.search(output)
    if m:
        return next(g for g in m.groups() if g) == answer.strip().upper()
    texts = {_option_letter(o): _option_text(o) for o in options}
    if answer not in texts:
        return False
    found = {letter for letter, t in texts.items() if t and _mentions(output, t)}
    return found == {answer}


def _option_letter(o: str) -> str:
    return o.strip()[0].upper()


def _option_text(o: str) -> str:
    return re.sub(r"^\s*\(?[A-Ea-e]\)\s*", "", o).strip()


def _mentions(output: str, text: str) -> bool:
    return re.search(r"(?<![\w.])" + re.escape(text) + r"(?!\w|\.\d)", output, re.IGNORECASE) is not None


def sentiment(output: str, answer: str, **_) -> bool:
    """IMDB: the gold word (Positive/Negative) appears and the other does not."""
    gold, other = answer.lower(), {"positive": "negative", "negative": "positive"}[answer.lower()]
    text = output.lower()
    return gold in text and other not in text


SCORERS = {"contains": contains, "last_number": last_number, "yes_no": yes_no, "option": option,
           "sentiment": sentiment}


def score(scorer: str, output: str, item: dict) -> bool:
    if scorer not in SCORERS:
        raise ValueError(f"scorer={scorer!r}: expected one of {', '.join(SCORERS)}")
    extras = {k: v for k, v in item.items() if k == "options"}
    return SCORERS[scorer](output, item["answer"], **extras)


def distinct_n(sequences, n: int = 2) -> float | None:
    """Unique n-grams / all n-grams over the sequences (token ids or words); None with no n-grams."""
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def answer_perplexity(params, cfg: ModelConfig, prompts: list[list[int]], answers: list[list[int]], *,
                      intervention=None, batch_size: int = 8) -> list[float | None]:
    """exp(mean negative log-likelihood) of each answer's tokens given its prompt, under the model with
    `intervention` over the whole prompt + answer (None: the intact model). None for an empty answer."""
    out = [None] * len(prompts)
    for start in range(0, len(prompts), batch_size):
        rows = list(range(start, min(start + batch_size, len(prompts))))
        seqs = [list(prompts[r]) + list(answers[r]) for r in rows]
        longest = max(len(s) for s in seqs)
        T = min(-(-longest // 32) * 32, max(longest, cfg.max_seq_len))
        tokens = np.zeros((len(rows), T), np.int32)
        mask, target = np.zeros((len(rows), T), bool), np.zeros((len(rows), T), bool)
        for i, (r, s) in enumerate(zip(rows, seqs)):
            tokens[i, :len(s)], mask[i, :len(s)] = s, True
            target[i, len(prompts[r]):len(s)] = True
        nll, count = _nll(params, *map(jnp.asarray, (tokens, mask, target)), as_hook(intervention), cfg=cfg)
        for i, r in enumerate(rows):
            if count[i] > 0:
                out[r] = float(np.exp(nll[i] / count[i]))
    return out


@functools.partial(jax.jit, static_argnames=("cfg",))  # the intervention is a traced pytree hook
def _nll(params, tokens_BT, mask_BT, target_BT, intervention, *, cfg):
    """Sum of -log p(token t | tokens < t) over target positions, and their count, per row."""
    logits = forward(params, tokens_BT, cfg, mask_BT=mask_BT, intervention=intervention).logits
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(logp, tokens_BT[:, 1:, None], axis=-1)[..., 0]
    t = target_BT[:, 1:]
    return -(picked * t).sum(1), t.sum(1)

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
from minimal_lm.batching import batch_rows, left_pad

_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d+(?:,\d{3})*(?:\.\d+)?")
_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_ECHO = re.compile(r"\b(?:yes|no)\s*(?:or|/)\s*(?:yes|no)\b", re.IGNORECASE)
_ANSWER_NUMBER = re.compile(r"(?:answer\s+is|answer\s*:|####|\\boxed\{)[\s:*$\\{]*("
                            + _NUMBER.pattern + ")", re.IGNORECASE)
_LETTER_AT = r"\(?([A-E])\)?(?![\w'])"
_STATED = re.compile(r"(?i:answer\s+is|answer\s*:|correct\s+(?:option|answer|choice)\s+is|option|choice)"
                     r"[\s:*]*(?:option\s+)?" + _LETTER_AT)
_LABELLED = re.compile(r"\(([A-E])\)|(?<![\w(])([A-E])\)")
_ALONE = re.compile(r"^\W*([A-E])\W*$")


def contains(output: str, answer, **_) -> bool:
    """The answer (or any of a list of accepted answers) appears in the output, ignoring case."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    return any(str(a).lower() in output.lower() for a in answers)


def parse_number(text: str) -> float | None:
    """The last number in text ("1,000" is one thousand; a trailing period is punctuation; the "-" of a
    range "6-7" is not a sign)."""
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def last_number(output: str, answer, **_) -> bool:
    """The authors' GSM8K rule (run_datasets.py:34-47, 458-466): the last number in the output equals the
    reference's final number (theirs drops minus signs)."""
    return _same_number(parse_number(output), answer, "last_number")


def first_answer_number(text: str) -> float | None:
    """The number after the first answer marker ("The answer is", "Answer:", "####", "\\boxed{"), else the
    last number: with stop strings the output holds one answer, and a marker names it even when a
    base model runs on into a question of its own."""
    m = _ANSWER_NUMBER.search(text)
    return float(m.group(1).replace(",", "")) if m else parse_number(text)


def answer_number(output: str, answer, **_) -> bool:
    """GSM8K (default): first_answer_number of the output equals the reference's final number."""
    return _same_number(first_answer_number(output), answer, "answer_number")


def _same_number(got, answer, name) -> bool:
    want = parse_number(str(answer))
    if want is None:
        raise ValueError(f"{name}: the reference answer {answer!r} holds no number")
    return got is not None and math.isclose(got, want, rel_tol=0, abs_tol=1e-6)


def first_yes_no(output: str) -> bool | None:
    """True for Yes, False for No, None when neither word appears ("not sure" is neither). An echoed
    "Yes or No" (the prompt's own phrase) is skipped."""
    m = _YES_NO.search(_ECHO.sub(" ", output))
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


def stated_option(output: str) -> str | None:
    """The final option letter the output states: the last "answer is (C)" / "Answer: C" / "option C";
    else the last labelled letter "(C)" or "C)"; else an output that is one letter. None otherwise (an
    article "A" is not a choice)."""
    for pattern in (_STATED, _LABELLED):
        found = [next(g for g in m.groups() if g) for m in pattern.finditer(output)]
        if found:
            return found[-1]
    m = _ALONE.match(output)
    return m.group(1) if m else None


def option(output: str, answer: str, options=(), **_) -> bool:
    """AQUA (default): the final stated option letter (stated_option) is the answer; with no letter, the
    correct option's text appears and no other option's text does."""
    letter = stated_option(output)
    if letter is not None:
        return letter == answer.strip().upper()
    texts = {_option_letter(o): _option_text(o) for o in options}
    if answer not in texts:
        return False
    found = {letter for letter, t in texts.items() if t and _mentions(output, t)}
    return found == {answer}


def option_text(output: str, answer: str, options=(), **_) -> bool:
    """The authors' AQUA rule (run_datasets.py:371-372, 402): the correct option's text (the option without
    its "C)" label) is a substring of the output."""
    text = next((o.strip()[2:] for o in options if _option_letter(o) == answer.strip().upper()), None)
    return bool(text) and text in output


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


SCORERS = {"contains": contains, "answer_number": answer_number, "last_number": last_number, "yes_no": yes_no,
           "option": option, "option_text": option_text, "sentiment": sentiment}


def score(scorer: str, output: str, item: dict) -> bool:
    if scorer not in SCORERS:
        raise ValueError(f"scorer={scorer!r}: expected one of {', '.join(SCORERS)}")
    extras = {k: v for k, v in item.items() if k == "options"}
    return SCORERS[scorer](output, item["answer"], **extras)


def distinct_n(sequences, n: int = 2) -> float | None:
    """Pooled: unique n-grams / all n-grams over all the sequences together (token ids or words); None with
    no n-grams. Ours ("distinct2_pooled_tokens" in results), not the paper's: twenty identical answers
    score about 1/20 however fluent each one is."""
    grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


_WORD = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks, close to nltk.word_tokenize (which the authors use)."""
    return _WORD.findall(text.lower())


def distinct_n_per_answer(texts, n: int = 2) -> float | None:
    """The paper's diversity (Figure 3; the authors' calculate_ngram_diversity, called on one answer at
    a time and averaged): per answer, unique / all word n-grams, averaged over answers; an answer with no
    n-gram counts 0.0, as theirs does. None with no answers."""
    scores = [distinct_n([words(t)], n) or 0.0 for t in texts]
    return float(np.mean(scores)) if scores else None


def answer_alone_perplexity(params, cfg: ModelConfig, answers: list[list[int]], *, intervention=None,
                            batch_size: int = 8) -> list[float | None]:
    """The paper's perplexity (Figure 3; the authors' calculate_perplexity): each answer's tokens alone, no
    prompt and no BOS, through the model being evaluated, so pass the mode's intervention (the disruption)
    or its quantized params; exp(mean NLL) of tokens 2..n given those before. None below 2 tokens (the
    authors get inf or nan there and drop nan from their mean)."""
    return answer_perplexity(params, cfg, [a[:1] for a in answers], [a[1:] for a in answers],
                             intervention=intervention, batch_size=batch_size)


def answer_perplexity(params, cfg: ModelConfig, prompts: list[list[int]], answers: list[list[int]], *,
                      intervention=None, batch_size: int = 8) -> list[float | None]:
    """exp(mean negative log-likelihood) of each answer's tokens given its prompt. `intervention` (default
    None: the intact model) is applied over the whole prompt + answer; experiment.py calls it without one,
    so its "perplexity_given_prompt" is the intact model's judgement of each mode's answers, not the
    paper's quantity (that is answer_alone_perplexity). None for an empty answer."""
    out = [None] * len(prompts)
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
    for rows in batch_rows([len(s) for s in seqs], batch_size):
        tokens, mask = left_pad([seqs[r] for r in rows], cap=cfg.max_seq_len)
        target = np.zeros(mask.shape, bool)
        for i, r in enumerate(rows):
            target[i, mask.shape[1] - len(answers[r]):] = True
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

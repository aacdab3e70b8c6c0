"""Prompts for probes: read from files, tokenize (optionally through a chat template), left-pad into batches."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from minimal_lm import files

DEFAULT_PROMPTS = (
    "There is important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you "
    "about the important information there. The grass is green. The sky is blue. The sun is yellow. Here we "
    "go. There and back again. The pass key is 68203. Remember it. 68203 is the pass key. What is the pass key?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May?",
    "Is the city of Kyoto in Japan? Answer Yes or No.",
    "The history of the printing press begins in the fifteenth century, when movable metal type changed how "
    "books were made, copied and sold across Europe.",
)
"""Used when no prompt file is given: passkey, GSM8K-style, parametric and plain prose, as in the paper."""


def read_text_file(path) -> list[str]:
    """A plain-text file; paragraphs (separated by blank lines) are the prompts."""
    text = Path(path).read_text(encoding="utf-8")
    prompts = [" ".join(p.split()) for p in text.split("\n\n")]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"{path}: no text (expected paragraphs separated by blank lines)")
    return prompts


def read_jsonl(path) -> list:
    """One prompt per line: a JSON string, or an object with "prompt" (text), "messages" (chat turns)
    or "tokens" (token ids). Other keys are ignored."""
    prompts = []
    for n, item in files.read_jsonl(path):
        if isinstance(item, dict) and not {"prompt", "messages", "tokens"} & item.keys():
            raise ValueError(f"{path}:{n}: object has none of the keys 'prompt', 'messages', 'tokens' "
                             f"(found {', '.join(sorted(item)) or 'no keys'})")
        if not isinstance(item, (str, dict)):
            raise ValueError(f"{path}:{n}: expected a JSON string or object, got {type(item).__name__}")
        prompts.append(item)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def encode(prompts: list, tokenizer, *, chat: bool = False, max_len: int | None = None,
           vocab_size: int | None = None) -> list[list[int]]:
    """Token ids per prompt. `chat` wraps text prompts as one user turn of the tokenizer's chat template.
    Prompts longer than max_len keep their first max_len tokens."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, dict) and "tokens" in p:
            ids = [int(t) for t in p["tokens"]]
        else:
            if tokenizer is None:
                raise ValueError(f"prompt {i} is text but the model has no tokenizer; give token ids "
                                 "({\"tokens\": [...]}) or a checkpoint with tokenizer.json")
            messages = p.get("messages") if isinstance(p, dict) else None
            text = p["prompt"] if isinstance(p, dict) and "prompt" in p else p
            if chat or messages is not None:
                messages = messages or [{"role": "user", "content": text}]
                ids = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True),
                                       add_special_tokens=False)
            else:
                ids = tokenizer.encode(text)
        if not ids:
            raise ValueError(f"prompt {i} has no tokens")
        if vocab_size is not None and not all(0 <= t < vocab_size for t in ids):
            raise ValueError(f"prompt {i}: token ids must lie in [0, {vocab_size}) for this model")
        out.append(ids[:max_len] if max_len else ids)
    return out


def padded_length(n: int, minimum: int = 8) -> int:
    """Round up to a power of two, so few shapes are compiled."""
    return max(minimum, 1 << (n - 1).bit_length())


def left_padded_batches(token_lists: list[list[int]], batch_size: int, pad_id: int = 0
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(tokens_BT int32, mask_BT bool) batches, prompts sorted by length, left padded to a power of
    two; the last batch is filled with empty rows (mask all False) to keep one batch shape."""
    order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
    for start in range(0, len(order), batch_size):
        rows = [token_lists[i] for i in order[start:start + batch_size]]
        T = padded_length(max(len(r) for r in rows))
        tokens_BT = np.full((batch_size, T), pad_id, np.int32)
        mask_BT = np.zeros((batch_size, T), bool)
        for b, r in enumerate(rows):
            tokens_BT[b, T - len(r):], mask_BT[b, T - len(r):] = r, True
        yield tokens_BT, mask_BT


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)

"""Token lists into fixed-shape, left-padded batches: the one bucket rule and the one padding routine.

Generation, the probes, answer scoring and the study's probe batch all pad here, so a [B, T] shape means
the same thing everywhere: real tokens right-aligned, `mask_BT` False on padding (forward then counts
positions from the first real token, so padding never changes a result).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

BUCKET = 32


def bucket_length(n: int, cap: int | None = None) -> int:
    """The padded length of n tokens: n rounded up to a multiple of BUCKET, so nearby lengths share one
    compiled program, but not past `cap` (a model's max_seq_len) unless n itself is."""
    T = -(-n // BUCKET) * BUCKET
    return T if cap is None else min(T, max(n, cap))


def left_pad(token_lists: list[list[int]], *, rows: int | None = None, pad_id: int = 0, cap: int | None = None,
             length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens_BT int32, mask_BT bool) with the lists left-padded to `length` (default: bucket_length of
    the longest, under cap) and B = rows (default: one per list; extra rows are empty, mask all False)."""
    T = bucket_length(max(len(t) for t in token_lists), cap) if length is None else length
    B = len(token_lists) if rows is None else rows
    tokens_BT = np.full((B, T), pad_id, np.int32)
    mask_BT = np.zeros((B, T), bool)
    for b, t in enumerate(token_lists):
        tokens_BT[b, T - len(t):], mask_BT[b, T - len(t):] = t, True
    return tokens_BT, mask_BT


def batch_rows(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of batch_size, shortest first (similar lengths share a batch: less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def left_padded_batches(token_lists: list[list[int]], batch_size: int, pad_id: int = 0, cap: int | None = None
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """left_pad batches of batch_size rows, prompts sorted by length; the last batch is filled with empty
    rows to keep one batch size."""
    for idx in batch_rows([len(t) for t in token_lists], batch_size):
        yield left_pad([token_lists[i] for i in idx], rows=batch_size, pad_id=pad_id, cap=cap)


def num_batches(n: int, batch_size: int) -> int:
    """How many batches left_padded_batches yields for n lists."""
    return -(-n // batch_size)

"""Batches as a pure function of (data seed, step), so a resumed run sees exactly the batches it would
have seen: random windows of memmapped token shards, or rows of the synthetic corpus.

A batch is int32 [B, T + 1]: inputs are [:, :-1], next-token targets [:, 1:].
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from train import synthetic
from train.config import DataConfig
from train.prepare import byte_tokenizer, write_tokenizer

EVAL_STREAM = 1 << 20  # rng stream of held-out batches, apart from every training step


class Shards:
    """The token files of one split, each opened with np.memmap."""

    def __init__(self, path: str | Path, split: str):
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"data.path={path}: no meta.json; write one with `python -m train prepare`")
        meta = json.loads(meta_path.read_text())
        entries = meta.get("splits", {}).get(split)
        if not entries:
            raise ValueError(f"{meta_path}: no files for split {split!r}")
        self.meta, self.arrays = meta, []
        for name, n in entries:
            f = path / name
            expected = n * np.dtype(meta["dtype"]).itemsize
            if not f.is_file() or f.stat().st_size != expected:
                size = f.stat().st_size if f.is_file() else "missing"
                raise ValueError(f"shard {f}: expected {expected} bytes ({n} {meta['dtype']} tokens), got {size}")
            self.arrays.append(np.memmap(f, dtype=meta["dtype"], mode="r", shape=(n,)))
        self.split, self.path = split, path

    def windows(self, rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
        """`batch_size` random windows of `length` tokens, each inside one shard."""
        room = np.array([max(len(a) - length + 1, 0) for a in self.arrays], np.float64)
        if room.sum() == 0:
            raise ValueError(f"{self.path}: split {self.split!r} has no shard with {length} tokens "
                             f"(train.seq_len + 1); lower train.seq_len or add text")
        shard = rng.choice(len(self.arrays), size=batch_size, p=room / room.sum())
        starts = (rng.random(batch_size) * room[shard]).astype(np.int64)
        return np.stack([self.arrays[s][o:o + length] for s, o in zip(shard, starts)]).astype(np.int32)


class ShardSource:
    def __init__(self, data: DataConfig):
        self.data = data
        self.train, self.val = Shards(data.path, "train"), Shards(data.path, "val")
        self.vocab_size = self.train.meta["vocab_size"]

    def batch(self, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        return self.train.windows(np.random.default_rng([self.data.seed, step]), batch_size, seq_len + 1)

    def eval_batch(self, index: int, batch_size: int, seq_len: int) -> np.ndarray:
        return self.val.windows(np.random.default_rng([self.data.seed, EVAL_STREAM, index]), batch_size, seq_len + 1)

    def save_tokenizer(self, run_dir: Path):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (Path(self.data.path) / name).is_file():
                shutil.copyfile(Path(self.data.path) / name, run_dir / name)


class SyntheticSource:
    vocab_size = synthetic.VOCAB_SIZE

    def __init__(self, data: DataConfig):
        self.data = data
        self.facts = synthetic.facts_table(data.num_facts, data.facts_seed)

    def batch(self, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        return synthetic.batch(self.data, "train", step, batch_size, seq_len + 1, self.facts)

    def eval_batch(self, index: int, batch_size: int, seq_len: int) -> np.ndarray:
        return synthetic.batch(self.data, "eval", index, batch_size, seq_len + 1, self.facts)

    def save_tokenizer(self, run_dir: Path):
        write_tokenizer(byte_tokenizer(), run_dir)


def make_source(data: DataConfig) -> ShardSource | SyntheticSource:
    return ShardSource(data) if data.kind == "shards" else SyntheticSource(data)

"""Batches as a pure function of (data seed, step), so a resumed run sees exactly the batches it would
have seen: random windows of memmapped token shards, or rows of the synthetic corpus.

A batch is int32 [B, T + 1]: inputs are [:, :-1], next-token targets [:, 1:].
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from train import synthetic
from train.config import DataConfig
from train.prepare import byte_tokenizer, write_tokenizer

EVAL_STREAM = 1 << 20  # rng stream of held-out batches, apart from every training step
TOKEN_DTYPES = ("uint8", "uint16", "int32", "uint32")
_CHUNK = 1 << 24


class DataError(ValueError):
    """The training data is missing, malformed, too short or does not fit the model; the message names
    the file and what was expected."""


class Shards:
    """The token files of one split, each opened with np.memmap."""

    def __init__(self, path: str | Path, split: str):
        path = Path(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            what = "no meta.json" if path.is_dir() else "no such directory"
            raise FileNotFoundError(f"data.path={path}: {what}; write one with `python -m train prepare`")
        meta = read_meta(meta_path)
        entries = meta["splits"].get(split)
        if not entries:
            raise DataError(f"{meta_path}: no files for split {split!r}")
        self.meta, self.arrays, self.names = meta, [], [name for name, _ in entries]
        dtype = np.dtype(meta["dtype"])
        for name, n in entries:
            f = path / name
            expected = n * dtype.itemsize
            if not f.is_file() or f.stat().st_size != expected:
                size = f.stat().st_size if f.is_file() else "missing"
                raise DataError(f"shard {f}: expected {expected} bytes ({n} {meta['dtype']} tokens), got {size}")
            self.arrays.append(np.memmap(f, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype))
        self.split, self.path = split, path

    def check(self, length: int, vocab_size: int) -> None:
        """Raise DataError unless some shard holds a window of `length` tokens and every token id is
        below `vocab_size` (a full scan, with a progress bar when long)."""
        if not any(len(a) >= length for a in self.arrays):
            raise DataError(f"{self.path}: split {self.split!r} has no shard with {length} tokens (train.seq_len + 1; "
                            f"longest {max(map(len, self.arrays))}); lower train.seq_len or add text")
        info = np.iinfo(np.dtype(self.meta["dtype"]))
        if info.min == 0 and info.max < vocab_size:
            return
        total = sum(map(len, self.arrays))
        with tqdm(total=total, unit="tok", unit_scale=True, desc=f"checking {self.split} token ids",
                  disable=total < 1 << 28 or None) as bar:
            for name, a in zip(self.names, self.arrays):
                for lo in range(0, len(a), _CHUNK):
                    chunk = np.asarray(a[lo:lo + _CHUNK])
                    if len(chunk) and (chunk.max() >= vocab_size or chunk.min() < 0):
                        at = int(np.argmax((chunk >= vocab_size) | (chunk < 0)))
                        raise DataError(f"shard {self.path / name}: token id {chunk[at]} at position {lo + at} is "
                                        f"outside the model's vocabulary of {vocab_size} (model.vocab_size); "
                                        f"were the shards written with another tokenizer?")
                    bar.update(len(chunk))

    def windows(self, rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
        """`batch_size` random windows of `length` tokens, each inside one shard."""
        room = np.array([max(len(a) - length + 1, 0) for a in self.arrays], np.float64)
        if room.sum() == 0:
            raise DataError(f"{self.path}: split {self.split!r} has no shard with {length} tokens "
                            f"(train.seq_len + 1); lower train.seq_len or add text")
        shard = rng.choice(len(self.arrays), size=batch_size, p=room / room.sum())
        starts = (rng.random(batch_size) * room[shard]).astype(np.int64)
        return np.stack([self.arrays[s][o:o + length] for s, o in zip(shard, starts)]).astype(np.int32)


def read_meta(meta_path: Path) -> dict:
    """meta.json of a data directory, checked: dtype, vocab_size and splits {name: [[file, tokens], ...]}."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("dtype") not in TOKEN_DTYPES:
        raise DataError(f"{meta_path}: dtype={meta.get('dtype')!r}: expected one of {', '.join(TOKEN_DTYPES)}")
    v = meta.get("vocab_size")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise DataError(f"{meta_path}: vocab_size={v!r}: expected a positive integer")
    splits = meta.get("splits")
    ok = isinstance(splits, dict) and all(
        isinstance(files, list) and all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                                        and "/" not in e[0] and isinstance(e[1], int) and not isinstance(e[1], bool)
                                        and e[1] >= 0 for e in files) for files in splits.values())
    if not ok:
        raise DataError(f"{meta_path}: splits: expected {{split: [[file name, token count], ...]}}")
    return meta


class ShardSource:
    """Windows of the token shards in `path` (default data.path): data.kind "shards", and "stdlib" once its
    corpus is built (train.stdlib)."""

    def __init__(self, data: DataConfig, path: str | Path | None = None):
        self.data, self.path = data, Path(data.path if path is None else path)
        self.train, self.val = Shards(self.path, "train"), Shards(self.path, "val")
        self.vocab_size = self.train.meta["vocab_size"]

    def check(self, length: int, vocab_size: int) -> None:
        """Before training: the tokenizer (if any) matches meta.json and the model, both splits have a
        window of `length` tokens, every token id fits the model's vocabulary."""
        tok = self.path / "tokenizer.json"
        if tok.is_file():
            from tokenizers import Tokenizer

            try:
                n = Tokenizer.from_file(str(tok)).get_vocab_size()
            except Exception as e:  # the tokenizers library raises its own exception type
                raise DataError(f"{tok}: cannot be read as a tokenizer ({e})") from None
            if n != self.vocab_size or n > vocab_size:
                raise DataError(f"{tok}: {n} tokens, but {self.train.path / 'meta.json'} says vocab_size="
                                f"{self.vocab_size} and the model has model.vocab_size={vocab_size}; the tokenizer "
                                f"must be the one the shards were written with and fit the model")
        for split in (self.train, self.val):
            split.check(length, vocab_size)

    def batch(self, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        return self.train.windows(np.random.default_rng([self.data.seed, step]), batch_size, seq_len + 1)

    def eval_batch(self, index: int, batch_size: int, seq_len: int) -> np.ndarray:
        return self.val.windows(np.random.default_rng([self.data.seed, EVAL_STREAM, index]), batch_size, seq_len + 1)

    def save_tokenizer(self, run_dir: Path):
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (self.path / name).is_file():
                shutil.copyfile(self.path / name, run_dir / name)


class SyntheticSource:
    vocab_size = synthetic.VOCAB_SIZE

    def __init__(self, data: DataConfig):
        self.data = data
        self.facts = synthetic.facts_table(data.num_facts, data.facts_seed)

    def check(self, length: int, vocab_size: int) -> None:
        if self.vocab_size > vocab_size:
            raise DataError(f"model.vocab_size={vocab_size} is smaller than the synthetic corpus's vocabulary "
                            f"({self.vocab_size} tokens)")

    def batch(self, step: int, batch_size: int, seq_len: int) -> np.ndarray:
        return synthetic.batch(self.data, "train", step, batch_size, seq_len + 1, self.facts)

    def eval_batch(self, index: int, batch_size: int, seq_len: int) -> np.ndarray:
        return synthetic.batch(self.data, "eval", index, batch_size, seq_len + 1, self.facts)

    def save_tokenizer(self, run_dir: Path):
        write_tokenizer(byte_tokenizer(), run_dir)


def make_source(data: DataConfig) -> ShardSource | SyntheticSource:
    """The batches of `data`; for data.kind "stdlib" the corpus is built first unless it is cached."""
    if data.kind == "stdlib":
        from train.stdlib import ensure_corpus

        return ShardSource(data, ensure_corpus(data))
    return ShardSource(data) if data.kind == "shards" else SyntheticSource(data)

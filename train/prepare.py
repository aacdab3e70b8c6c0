"""`python -m train prepare`: tokenize text files into flat token shards read later with np.memmap.

Layout of a data directory: tokenizer.json, meta.json ({"dtype", "vocab_size", "eos_id", "splits":
{split: [[file, tokens], ...]}}), train_00000.bin ..., val_00000.bin ... Each file ends with EOS; the
last `val_fraction` of each file's lines goes to the val split.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm

EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters, which byte-level tokenizers use as their alphabet."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_tokenizer(add_bos: bool = True) -> Tokenizer:
    """Token id = byte value, plus <|endoftext|> = 256 (prepended as BOS when `add_bos`)."""
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOS])
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{EOS} $A", pair=f"{EOS} $A {EOS} $B", special_tokens=[(EOS, 256)])
    return tok


def train_tokenizer(files: list[Path], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) with <|endoftext|>, trained on `files`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    return tok


def write_tokenizer(tok: Tokenizer, out: Path, max_len: int | None = None):
    """tokenizer.json plus a tokenizer_config.json naming the special tokens."""
    tok.save(str(out / "tokenizer.json"))
    cfg = {"bos_token": EOS, "eos_token": EOS, "unk_token": None,
           "add_bos_token": tok.post_processor is not None, "tokenizer_class": "PreTrainedTokenizerFast"}
    if max_len:
        cfg["model_max_length"] = max_len
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


class _ShardWriter:
    def __init__(self, out: Path, split: str, dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.files: list[list] = []
        self.f = None

    def write(self, ids: np.ndarray):
        while len(ids):
            if self.f is None or self.files[-1][1] == self.shard_tokens:
                self.close()
                name = f"{self.split}_{len(self.files):05d}.bin"
                self.f, self.files = open(self.out / name, "wb"), self.files + [[name, 0]]
            n = min(len(ids), self.shard_tokens - self.files[-1][1])
            self.f.write(ids[:n].astype(self.dtype).tobytes())
            self.files[-1][1] += n
            ids = ids[n:]

    def close(self):
        if self.f is not None:
            self.f.close()


def prepare(files: list[str | Path], out: str | Path, *, tokenizer: str | Path | None = None,
            vocab_size: int = 8192, val_fraction: float = 0.01, shard_tokens: int = 1 << 28,
            chunk_lines: int = 4096) -> dict:
    """Tokenize `files` into `out`; train a tokenizer unless a tokenizer.json is given. Returns meta."""
    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"prepare: text file {f} not found")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"prepare: val_fraction={val_fraction}: expected 0 <= val_fraction < 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        if not Path(tokenizer).is_file():
            raise FileNotFoundError(f"prepare: tokenizer file {tokenizer} not found")
        tok = Tokenizer.from_file(str(tokenizer))
    else:
        tok = train_tokenizer(files, vocab_size)
    eos = tok.token_to_id(EOS)
    if eos is None:
        raise ValueError(f"prepare: the tokenizer has no {EOS} token to separate documents")
    dtype = np.uint16 if tok.get_vocab_size() <= 1 << 16 else np.uint32
    writers = {s: _ShardWriter(out, s, dtype, shard_tokens) for s in ("train", "val")}
    for f in tqdm(files, desc="tokenizing", unit="file"):
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        cut = len(lines) - int(round(len(lines) * val_fraction))
        for split, part in (("train", lines[:cut]), ("val", lines[cut:])):
            for i in range(0, len(part), chunk_lines):
                enc = tok.encode_batch(part[i:i + chunk_lines], add_special_tokens=False)
                writers[split].write(np.fromiter((t for e in enc for t in e.ids), np.int64))
            if part:
                writers[split].write(np.array([eos]))
    for w in writers.values():
        w.close()
    write_tokenizer(tok, out)
    meta = {"dtype": np.dtype(dtype).name, "vocab_size": tok.get_vocab_size(), "eos_id": eos,
            "splits": {s: w.files for s, w in writers.items()}}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta

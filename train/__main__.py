"""`python -m train --config configs/NAME.py --out RUN_DIR [key=value ...]` trains (or resumes);
`python -m train prepare --out DATA_DIR FILE ...` writes token shards. Bad input (config, overrides, paths,
data, a run directory of another config) exits with code 2; a non-finite loss or unusable checkpoints with 1."""
from __future__ import annotations

import argparse
import sys

from minimal_lm.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prepare"]:
        return _prepare(argv[1:])
    p = argparse.ArgumentParser(prog="python -m train", description="Train (or resume) a run.")
    p.add_argument("--config", required=True, help="a Python file exposing CONFIG = RunConfig(...)")
    p.add_argument("--out", required=True, help="run directory (created, or resumed if it holds this run)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.position=alibi train.steps=200")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (one process per host: TPU pod slices, "
                        "several GPU hosts; the usual JAX coordinator environment variables apply)")
    args = p.parse_args(argv)
    if args.distributed:
        import jax

        jax.distributed.initialize()
    from minimal_lm.safetensors_io import CheckpointError
    from train.config import load_config
    from train.data import DataError
    from train.loop import NonFiniteLoss, run

    try:
        cfg = load_config(args.config, args.overrides)
        result = run(cfg, args.out)
    except ConfigError as e:
        p.exit(2, f"python -m train: config error: {e}\n")
    except (DataError, FileNotFoundError) as e:
        p.exit(2, f"python -m train: data error: {e}\n")
    except (NonFiniteLoss, CheckpointError) as e:
        p.exit(1, f"python -m train: {e}\n")
    print(f"run {args.out}: step {result['step']}, eval loss {result.get('eval_loss', float('nan')):.4f}; "
          f"metrics in {args.out}/metrics.jsonl")
    return 0


def _prepare(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m train prepare", description="Tokenize text files into shards.")
    p.add_argument("files", nargs="+", help="UTF-8 text files; each ends with <|endoftext|>")
    p.add_argument("--out", required=True, help="data directory to write")
    p.add_argument("--tokenizer", help="an existing tokenizer.json (default: train a byte-level BPE)")
    p.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size when training one")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of each file's lines held out")
    p.add_argument("--shard-tokens", type=int, default=1 << 28, help="tokens per shard file")
    args = p.parse_args(argv)
    from train.prepare import prepare

    try:
        meta = prepare(args.files, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                       val_fraction=args.val_fraction, shard_tokens=args.shard_tokens)
    except (FileNotFoundError, ValueError) as e:
        p.exit(2, f"python -m train prepare: {e}\n")
    counts = {s: sum(n for _, n in files) for s, files in meta["splits"].items()}
    print(f"wrote {args.out}: vocab {meta['vocab_size']}, tokens {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m train --config configs/NAME.py --out RUN_DIR [key=value ...]` trains (or resumes);
`python -m train prepare --out DATA_DIR FILE ...` writes token shards; `python -m train items --config
configs/NAME.py --out ITEMS.jsonl` writes held-out synthetic items for `python -m probes disrupt --task jsonl`;
`python -m train keys [--config configs/NAME.py] [key=value ...]` lists every config key with its value.
Bad input (config, overrides, paths, data, a run directory of another config or one another process
is writing into) exits with code 2; a non-finite loss or unusable checkpoints with 1."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minimal_lm.config import ConfigError

USAGE = """python -m train --config FILE --out RUN_DIR [--distributed] [key=value ...]
       python -m train {prepare,items,keys} ...  (each with --help)"""
EPILOG = """subcommands:
  prepare   tokenize text files into token shards (a data.kind=shards directory)
  items     write held-out items of a synthetic-corpus run as JSONL, for `python -m probes disrupt`
  keys      list every config key (model.*, train.*, data.*) with what it takes and its value:
            `python -m train keys` for the defaults, `python -m train keys --config FILE [key=value ...]`
            for a config with its overrides

exit codes: 2 for bad input (config, overrides, paths, data, a run directory of another config or in
use by another process), 1 for a non-finite loss or unusable checkpoints"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prepare"]:
        return _prepare(argv[1:])
    if argv[:1] == ["items"]:
        return _items(argv[1:])
    if argv[:1] == ["keys"]:
        return _keys(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m train", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train (or resume) a run.", epilog=EPILOG)
    p.add_argument("--config", required=True, help="a Python file exposing CONFIG = RunConfig(...)")
    p.add_argument("--out", required=True, help="run directory (created, or resumed if it holds this run)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. model.position=alibi train.steps=200 (every key: python -m train keys)")
    p.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (one process per host: TPU pod slices, "
                        "several GPU hosts; the usual JAX coordinator environment variables apply)")
    args = p.parse_args(argv)
    if args.distributed:
        _distributed(p)
    from minimal_lm.safetensors_io import CheckpointError
    from train.checkpoint import RunDirBusy
    from train.config import load_config
    from train.data import DataError
    from train.loop import NonFiniteLoss, run

    try:
        cfg = load_config(args.config, args.overrides)
        result = run(cfg, args.out)
    except RunDirBusy as e:
        p.exit(2, f"python -m train: {e}\n")
    except ConfigError as e:
        p.exit(2, f"python -m train: config error: {e}\n")
    except (DataError, FileNotFoundError) as e:
        p.exit(2, f"python -m train: data error: {e}\n")
    except (NonFiniteLoss, CheckpointError) as e:
        p.exit(1, f"python -m train: {e}\n")
    print(f"run {args.out}: step {result['step']}, eval loss {result.get('eval_loss', float('nan')):.4f}; "
          f"metrics in {args.out}/metrics.jsonl")
    return 0


def _distributed(p: argparse.ArgumentParser) -> None:
    """jax.distributed.initialize(), given JAX_NUM_PROCESSES and JAX_PROCESS_ID where set (JAX itself reads
    only JAX_COORDINATOR_ADDRESS; on a TPU slice or a SLURM, Open MPI or Kubernetes cluster it finds all three)."""
    import os

    import jax

    kw = {}
    for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if os.environ.get(name):
            try:
                kw[key] = int(os.environ[name])
            except ValueError:
                p.exit(2, f"python -m train: {name}={os.environ[name]!r}: expected an integer\n")
    try:
        jax.distributed.initialize(**kw)
    except (ValueError, TypeError) as e:
        p.exit(2, f"python -m train: --distributed: {e} (set JAX_COORDINATOR_ADDRESS=HOST:PORT, "
                  f"JAX_NUM_PROCESSES and JAX_PROCESS_ID, or run under a cluster JAX detects)\n")


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


def _items(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m train items",
        description="Write held-out items of a synthetic-corpus run (contextual: pass keys or pairs stated in "
                    "the prompt; parametric: facts of the training table) as JSONL, one {prompt, answer, kind} "
                    "per line, for `python -m probes disrupt --task jsonl --task-file FILE`.")
    p.add_argument("--config", required=True, help="the run's config file (its data settings make the items)")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--n", type=int, default=50, help="items of each kind")
    p.add_argument("--seed", type=int, default=0, help="item seed (items never appear in training)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="the run's overrides, e.g. data.passkey_digits=3")
    args = p.parse_args(argv)
    from train.config import load_config
    from train.synthetic import write_items

    if args.n < 1:
        p.exit(2, f"python -m train items: --n={args.n}: expected a positive integer\n")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        p.exit(2, f"python -m train items: config error: {e}\n")
    if cfg.data.kind != "synthetic":
        p.exit(2, f"python -m train items: {args.config}: data.kind={cfg.data.kind!r}; items exist only for "
                  f"data.kind='synthetic'\n")
    if Path(args.out).is_dir():
        p.exit(2, f"python -m train items: --out {args.out} is a directory, expected a .jsonl file\n")
    try:
        items = write_items(args.out, args.n, args.seed, cfg.data)
    except OSError as e:
        p.exit(2, f"python -m train items: cannot write {args.out}: {e}\n")
    print(f"wrote {args.out}: {len(items)} items ({args.n} contextual, {args.n} parametric)")
    return 0


def _keys(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m train keys",
                                description="List every config key an override can set, with what it takes and "
                                            "its value (the defaults, or a config file's with its overrides).")
    p.add_argument("--config", help="a Python file exposing CONFIG = RunConfig(...) (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from train.config import RunConfig, apply_overrides, config_keys, load_config

    try:
        cfg = load_config(args.config, args.overrides) if args.config else apply_overrides(RunConfig(), args.overrides)
    except ConfigError as e:
        p.exit(2, f"python -m train keys: config error: {e}\n")
    rows = config_keys(cfg)
    width = max(len(k) for k, _, _ in rows)
    for key, kind, value in rows:
        print(f"{key:<{width}}  {value!r:<12}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

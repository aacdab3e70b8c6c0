"""`python -m train.demo --out runs/demo`: train the tiny RoPE and NoPE models on the synthetic corpus
(resuming if run before) and print where their runs are, with final eval loss vs unigram entropy."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minimal_lm.config import ConfigError
from train.config import load_config
from train.loop import run
from train.synthetic import unigram_entropy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NAMES = ("tiny_rope", "tiny_nope")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__)
    p.add_argument("--out", default="runs/demo", help="parent directory of the two run directories")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to both configs, e.g. train.steps=50")
    args = p.parse_args(argv)
    rows = []
    try:
        for name in NAMES:
            cfg = load_config(CONFIGS / f"{name}.py", args.overrides)
            result = run(cfg, Path(args.out) / name)
            rows.append((name, result, unigram_entropy(cfg.data, cfg.train.seq_len + 1)))
    except ConfigError as e:
        p.exit(2, f"python -m train.demo: config error: {e}\n")
    print(f"\n{'run':<10} {'step':>5} {'eval loss':>9} {'unigram entropy':>15}  "
          "run directory (metrics.jsonl, checkpoints/)")
    for name, r, h in rows:
        print(f"{name:<10} {r['step']:>5} {r.get('eval_loss', float('nan')):>9.3f} {h:>15.3f}  {r['run_dir']}")
    print("losses in nats per token; the unigram entropy is the loss of the best context-free predictor")
    return 0


if __name__ == "__main__":
    sys.exit(main())

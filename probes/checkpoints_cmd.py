"""`python -m probes checkpoints --out DIR CKPT...`: probe a model's training checkpoints in turn on the same
prompts and write the emergence report of a from-scratch study (DIR/index.html): max ratio and low-frequency
share per layer and site against step, Figure-2 views at chosen steps, step 0 as the baseline.

CKPT is a Hugging Face directory, a run directory (every saved checkpoint) or a hub id at a revision
(EleutherAI/pythia-160m@step1000, downloaded through huggingface_hub); the step is read from a name ending in
step<N>, step_<N> or checkpoint-<N>, or given as STEP=CKPT. Rerunning skips the steps already recorded, so
checkpoints can be added to DIR later."""
from __future__ import annotations

import argparse
import shlex

from minimal_lm.cli import STRICT_HELP


def register(subparsers) -> None:
    p = subparsers.add_parser("checkpoints", help="massive values over a model's training checkpoints (e.g. Pythia's "
                              "revisions): records per step and the emergence report", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="[STEP=]DIR, [STEP=]RUN_DIR or [STEP=]ID@REVISION")
    p.add_argument("--out", required=True, help="checkpoints directory (created, or resumed)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text-file", help="plain text; each paragraph (blank-line separated) is a prompt")
    src.add_argument("--prompts", help='JSONL: a string, or {"prompt"|"tokens": ...} per line (default: the '
                     "built-in passkey, GSM8K-style, Yes/No and prose prompts)")
    p.add_argument("--lambda", dest="lam", type=float, default=5.0, help="massive: M > lambda * head mean (5)")
    p.add_argument("--top-k", type=int, default=1, help="top-k dims per head for the low-frequency share (1)")
    p.add_argument("--max-len", type=int, default=None, help="truncate prompts (default: the model's max_seq_len)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward (8)")
    p.add_argument("--dtype", default=None, help="compute dtype, e.g. float32 (default: each checkpoint's own)")
    p.add_argument("--tokens-per-step", type=int, default=0,
                   help="training tokens per step, for the tokens-seen axis (Pythia: 2097152); 0: unknown")
    p.add_argument("--heatmap-steps", default="", help="steps of the Figure-2 views, comma list (default: first, last)")
    p.add_argument("--heatmap-layers", default="", help="layers of the Figure-2 views (default: up to 4, else "
                   "first, middle, last)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--name", default=None, help="the series' name in the report (default: the hub repo or the "
                   "checkpoints' parent directory)")
    p.set_defaults(func=run)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag}={text!r}: expected comma-separated integers") from None


def run(args) -> None:
    from probes import prompts
    from probes.checkpoints import probe_checkpoints

    items = (prompts.read_text_file(args.text_file) if args.text_file else
             prompts.read_jsonl(args.prompts) if args.prompts else None)
    index = probe_checkpoints(
        args.checkpoints, args.out, items=items, prompt_source=args.text_file or args.prompts or "built-in prompts",
        lam=args.lam, top_k=args.top_k, max_len=args.max_len, batch_size=args.batch_size, dtype=args.dtype,
        tokens_per_step=args.tokens_per_step, name=args.name, strict=args.strict,
        heatmap_steps=_ints(args.heatmap_steps, "--heatmap-steps"),
        heatmap_layers=_ints(args.heatmap_layers, "--heatmap-layers"),
        command=shlex.join(["python", "-m", "probes", *getattr(args, "argv", [])]))
    print(f"wrote {index}")

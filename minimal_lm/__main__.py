"""Command line: generate text, dump logits, export to Hugging Face.

  python -m minimal_lm generate --model PATH --prompt TEXT [--chat] [--max-new-tokens N] [--strict]
  python -m minimal_lm logits --model PATH --text-file F --out F.npy [--strict]
  python -m minimal_lm export --model RUN_DIR --out HF_DIR [--strict]

PATH is an HF checkpoint directory, a hub id (with huggingface_hub installed) or a run directory. Keys of its
config.json that minimal_lm does not read are named in one warning line; --strict refuses them (exit code 2).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from minimal_lm.cli import STRICT_HELP, warnings_as_lines
from minimal_lm.config import ConfigError
from minimal_lm.files import refuse_file_as_dir
from minimal_lm.generate import generate
from minimal_lm.hf import from_pretrained, save_hf
from minimal_lm.model import forward
from minimal_lm.safetensors_io import CheckpointError


def main(argv=None):
    """Bad input (a missing path, a malformed checkpoint or config, a bad value) exits with code 2 and
    one line naming it, like argparse's own usage errors; our warnings (e.g. ignored config keys) are one
    "python -m minimal_lm COMMAND: warning: ..." line each on stderr."""
    parser = _parser()
    args = parser.parse_args(argv)
    prog = f"python -m minimal_lm {args.command}"
    try:
        with warnings_as_lines(prog):
            args.run(args)
    except (CheckpointError, ConfigError, ValueError, FileNotFoundError) as e:
        parser.exit(2, f"{prog}: error: {e}\n")


def _parser():
    p = argparse.ArgumentParser(prog="python -m minimal_lm", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="print the continuation of a prompt")
    g.add_argument("--model", required=True)
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat template")
    g.add_argument("--system", help="with --chat: a system message before the prompt")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", help="float32 | bfloat16 | float16 (default: the checkpoint's)")
    g.add_argument("--strict", action="store_true", help=STRICT_HELP)
    g.set_defaults(run=_generate)

    lg = sub.add_parser("logits", help="save float32 logits [T, V] of every position of a text")
    lg.add_argument("--model", required=True)
    lg.add_argument("--text-file", required=True)
    lg.add_argument("--out", required=True, help=".npy file for the logits")
    lg.add_argument("--ids-out", help="optional .npy file for the token ids")
    lg.add_argument("--no-special-tokens", action="store_true", help="do not add BOS/EOS when encoding")
    lg.add_argument("--dtype")
    lg.add_argument("--strict", action="store_true", help=STRICT_HELP)
    lg.set_defaults(run=_logits)

    e = sub.add_parser("export", help="write a RoPE model as a Hugging Face Llama directory")
    e.add_argument("--model", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--dtype", help="dtype of the exported weights (default: the model's)")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty --out directory")
    e.add_argument("--strict", action="store_true", help=STRICT_HELP)
    e.set_defaults(run=_export)
    return p


def _load(path, dtype=None, strict=False):
    pre = from_pretrained(path, dtype=dtype, strict=strict)
    if pre.tokenizer is None:
        raise CheckpointError(f"{path}: no tokenizer.json, so text cannot be encoded")
    return pre


def _generate(args):
    cfg, params, tok = _load(args.model, args.dtype, args.strict)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        ids = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True), add_special_tokens=False)
    else:
        ids = tok.encode(args.prompt)
    new = generate(params, cfg, [ids], args.max_new_tokens, eos_ids=tok.eos_token_ids,
                   temperature=args.temperature, top_k=args.top_k, seed=args.seed)[0]
    print(tok.decode(new))


def _logits(args):
    cfg, params, tok = _load(args.model, args.dtype, args.strict)
    with open(args.text_file, encoding="utf-8") as f:
        ids = tok.encode(f.read(), add_special_tokens=not args.no_special_tokens)
    if not ids:
        raise ValueError(f"{args.text_file}: encodes to no tokens")
    if len(ids) > cfg.max_seq_len:
        raise ValueError(f"{args.text_file}: {len(ids)} tokens exceed max_seq_len={cfg.max_seq_len}")
    logits = jax.jit(forward, static_argnames="cfg")(params, jnp.asarray([ids]), cfg=cfg).logits[0]
    out = _npy_path(args.out, "--out")
    ids_out = _npy_path(args.ids_out, "--ids-out") if args.ids_out else None
    np.save(out, np.asarray(logits, np.float32))
    if ids_out:
        np.save(ids_out, np.asarray(ids, np.int32))
    print(f"{out}: logits of {len(ids)} tokens x {cfg.vocab_size}", file=sys.stderr)


def _npy_path(path: str, flag: str) -> Path:
    """The file np.save writes for `path` (it adds .npy); a directory there is refused."""
    out = Path(path if path.endswith(".npy") else path + ".npy")
    if out.is_dir():
        raise ValueError(f"{flag} {out} is a directory, expected a .npy file")
    return out


def _export(args):
    out = refuse_file_as_dir(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise ValueError(f"--out {out} is not empty (holds {held}); choose a new directory or pass --overwrite")
    cfg, params, tok = from_pretrained(args.model, strict=args.strict)
    save_hf(args.out, cfg, params, tokenizer=tok, dtype=args.dtype)
    print(f"{args.out}: {cfg.num_layers}-layer {cfg.d_model}-wide model exported", file=sys.stderr)


if __name__ == "__main__":
    main()

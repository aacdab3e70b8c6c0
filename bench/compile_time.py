"""Compile time of the training step: a 32-layer model against a 4-layer one, scanned layers (ours)
and, as the reference, the same step with unrolled layers (scan_layers=False).

Full shape: GPT-2 width (d 768, 12 heads, seq 1024, vocab 50304, batch 16, bf16 compute). The
step is lowered from abstract shapes (nothing allocated) and compiled; one throwaway compile runs
first so XLA's start-up cost is not charged to the first model.
"""
from __future__ import annotations

import sys
import time

from common import Report, emit, full_mode, parser, run_side
from train_step import train_fns

DEPTHS = (4, 32)


def shape(full: bool) -> dict:
    if full:
        return dict(vocab=50304, d=768, heads=12, mlp=2048, seq=1024, batch=16)
    return dict(vocab=1024, d=128, heads=4, mlp=384, seq=128, batch=8)


def compile_seconds(cfg, s: dict) -> dict:
    import jax
    import jax.numpy as jnp

    fn, init, _, source = train_fns(cfg)
    state = jax.eval_shape(init)
    tokens = jax.ShapeDtypeStruct((s["batch"], s["seq"] + 1), jnp.int32)
    t0 = time.perf_counter()
    lowered = fn.lower(state, tokens, jax.ShapeDtypeStruct((), jnp.int32))
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"lower": t1 - t0, "compile": t2 - t1, "s": t2 - t0, "step": source}


def ours(s: dict, full: bool, reference: bool) -> dict:
    import jax

    from minimal_lm import ModelConfig

    gpu = jax.default_backend() == "gpu"
    base = ModelConfig(vocab_size=s["vocab"], d_model=s["d"], num_heads=s["heads"], mlp_dim=s["mlp"],
                       max_seq_len=s["seq"], dtype="bfloat16" if full else "float32",
                       attention_impl="cudnn" if gpu and full else None)
    compile_seconds(base.replace(num_layers=1, d_model=64, num_heads=2, mlp_dim=128), s)
    return {f"{'scan' if scan else 'unroll'}/{n}": compile_seconds(base.replace(num_layers=n, scan_layers=scan), s)
            for scan in ((True, False) if reference else (True,)) for n in DEPTHS}


def main():
    p = parser(__doc__)
    p.add_argument("--reference", choices=("yes", "no"), default="no", help="also compile the unrolled "
                   "reference (slow: an unrolled 32-layer step takes 25 s on 2 CPU cores, minutes on a GPU)")
    args = p.parse_args()
    if args.side:
        return emit(ours(shape(not args.tiny), not args.tiny, args.reference == "yes"))
    full = full_mode(args)
    s = shape(full)
    reference = args.reference == "yes"
    r = run_side(__file__, "ours", ["--full" if full else "--tiny", "--reference", "yes" if reference else "no"])
    rep = Report("Compile time of the train step", full, f"{s}; ours: scanned layers, reference: unrolled")
    unroll = {n: r[f"unroll/{n}"]["s"] if reference else None for n in DEPTHS}
    for n in DEPTHS:
        rep.row(f"lower + compile seconds, {n} layers", r[f"scan/{n}"]["s"], unroll[n], "s", higher_is_better=False)
    ratio = {v: r[f"{v}/{DEPTHS[1]}"]["s"] / r[f"{v}/{DEPTHS[0]}"]["s"] if f"{v}/{DEPTHS[0]}" in r else None
             for v in ("scan", "unroll")}
    rep.row(f"{DEPTHS[1]}-layer / {DEPTHS[0]}-layer time", ratio["scan"], ratio["unroll"], "x",
            higher_is_better=False)
    rep.note("XLA compile alone (no tracing/lowering): " + ", ".join(
        f"{k} {v['compile']:.2f} s" for k, v in r.items() if isinstance(v, dict)))
    rep.note(f"ours uses {r['scan/4']['step']}; target: {DEPTHS[1]} layers compile in <= 1.5x the time of "
             f"{DEPTHS[0]}; got {ratio['scan']:.2f}x")
    rep.append(args.results)


if __name__ == "__main__":
    sys.exit(main())

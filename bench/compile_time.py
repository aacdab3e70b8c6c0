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

DEPTHS = (4, 32)


def shape(full: bool) -> dict:
    if full:
        return dict(vocab=50304, d=768, heads=12, mlp=2048, seq=1024, batch=16)
    return dict(vocab=1024, d=128, heads=4, mlp=384, seq=128, batch=8)


def step_and_state(cfg):
    """The jitted train step and abstract (state, tokens) to lower it with: train.step's when present."""
    import jax

    from minimal_lm import init_params

    try:
        from train.config import TrainConfig
        from train.step import TrainState, optimizer, steps

        tc = TrainConfig(lr=3e-4, b2=0.95, weight_decay=0.1, grad_clip=1.0, progress=False)
        opt = optimizer(tc)

        def fresh():
            params = init_params(cfg, jax.random.key(0))
            return TrainState(params, opt.init(params))

        state = jax.eval_shape(fresh)
        return steps(cfg, tc)[0], (state,), "train.step"
    except ImportError:
        from train_step import _optimizer, local_step

        opt = _optimizer()
        params = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
        return local_step(cfg), (params, jax.eval_shape(opt.init, params)), "local step"


def compile_seconds(cfg, s: dict) -> dict:
    import jax
    import jax.numpy as jnp

    step, state, source = step_and_state(cfg)
    tokens = jax.ShapeDtypeStruct((s["batch"], s["seq"] + 1), jnp.int32)
    t0 = time.perf_counter()
    lowered = step.lower(*state, tokens)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"lower": t1 - t0, "compile": t2 - t1, "s": t2 - t0, "step": source}


def ours(s: dict, full: bool) -> dict:
    import jax

    from minimal_lm import ModelConfig

    gpu = jax.default_backend() == "gpu"
    base = ModelConfig(vocab_size=s["vocab"], d_model=s["d"], num_heads=s["heads"], mlp_dim=s["mlp"],
                       max_seq_len=s["seq"], dtype="bfloat16" if full else "float32",
                       attention_impl="cudnn" if gpu and full else None)
    compile_seconds(base.replace(num_layers=1, d_model=64, num_heads=2, mlp_dim=128), s)
    return {f"{'scan' if scan else 'unroll'}/{n}": compile_seconds(base.replace(num_layers=n, scan_layers=scan), s)
            for scan in (True, False) for n in DEPTHS}


def main():
    args = parser(__doc__).parse_args()
    if args.side:
        return emit(ours(shape(not args.tiny), not args.tiny))
    full = full_mode(args)
    s = shape(full)
    r = run_side(__file__, "ours", ["--full"] if full else ["--tiny"])
    rep = Report("Compile time of the train step", full, f"{s}; ours: scanned layers, reference: unrolled")
    for n in DEPTHS:
        rep.row(f"lower + compile seconds, {n} layers", r[f"scan/{n}"]["s"], r[f"unroll/{n}"]["s"], "s",
                higher_is_better=False)
    ratio = {v: r[f"{v}/{DEPTHS[1]}"]["s"] / r[f"{v}/{DEPTHS[0]}"]["s"] for v in ("scan", "unroll")}
    rep.row(f"{DEPTHS[1]}-layer / {DEPTHS[0]}-layer time", ratio["scan"], ratio["unroll"], "x",
            higher_is_better=False)
    rep.note("XLA compile alone (no tracing/lowering): " + ", ".join(
        f"{k} {v['compile']:.2f} s" for k, v in r.items() if isinstance(v, dict)))
    rep.note(f"ours uses {r['scan/4']['step']}; target: {DEPTHS[1]} layers compile in <= 1.5x the time of "
             f"{DEPTHS[0]}; got {ratio['scan']:.2f}x")
    rep.append(args.results)


if __name__ == "__main__":
    sys.exit(main())

"""Whole training runs and the bare step on CPU, ours vs HF LlamaForCausalLM in eager PyTorch, and the limit.

At the default study's shapes (configs/tiny_rope.py: 2 layers, d 128, 4 heads, vocab 264, 8 x 256 tokens)
and at a 6-layer d 384 shape (6 heads, MLP 1024, same batch), float32, on 1 and 2 threads:
- a whole run: ours is `train.loop.run` on the config (synthetic data pipeline, metrics every step, eval
  and checkpoints at the config's cadence), its figure the median tokens_per_s of metrics.jsonl; the peer
  is the same loop in PyTorch (random tokens, AdamW + warmup-cosine + grad clip 1, a metrics line with the
  loss fetched every step, eval and torch.save checkpoints at the same cadence), figured the same way;
- the bare step (ours: train.step's donated jitted step on a batch already on the device);
- the limit: a 2048^3 float32 matmul with XLA and with torch on the same threads, and each step's achieved
  FLOP/s (6N + 12LHQT per token, as bench/train_step.py) as a fraction of it.
Each (shape, threads) pair runs ours and the peer in fresh processes, alternating over --rounds; the best
round of each counts. 1 thread pins both children to one CPU (bench/common.run_side).
"""
from __future__ import annotations

import argparse
import os
import sys

from common import ROOT, Report, emit, flops_per_token, jax_sync, parser, run_side, summary, timed

SHAPES = {  # whole runs long enough that their median is not the start: XLA:CPU's first ~4 steps grow the heap
    "study": dict(vocab=264, d=128, layers=2, heads=4, mlp=384, seq=256, batch=8,
                  steps=60, eval_every=50, eval_batches=4, checkpoint_every=50, iters=3, repeats=3),
    "d384": dict(vocab=264, d=384, layers=6, heads=6, mlp=1024, seq=256, batch=8,
                 steps=36, eval_every=12, eval_batches=1, checkpoint_every=12, iters=2, repeats=2),
}


def matmul_gflops(matmul, sync) -> float:
    out = timed(matmul, sync, warmup=1, iters=3, repeats=3)
    return 2 * 2048 ** 3 / min(out) / 1e9


def median_tps(lines: list[dict]) -> float:
    import statistics

    return statistics.median(x["tokens_per_s"] for x in lines)


def ours(name: str) -> dict:
    import json
    import tempfile

    import jax
    import jax.numpy as jnp

    from minimal_lm import count_params
    from train.config import load_config
    from train.loop import run
    from train.step import init_state, steps

    s = SHAPES[name]
    cfg = load_config(os.path.join(ROOT, "configs", "tiny_rope.py"), [
        f"model.d_model={s['d']}", f"model.num_layers={s['layers']}", f"model.num_heads={s['heads']}",
        f"model.mlp_dim={s['mlp']}", f"model.max_seq_len={s['seq']}", f"train.seq_len={s['seq']}",
        f"train.batch_size={s['batch']}", f"train.steps={s['steps']}", f"train.eval_every={s['eval_every']}",
        f"train.eval_batches={s['eval_batches']}", f"train.checkpoint_every={s['checkpoint_every']}",
        "train.warmup_steps=2", "train.progress=false"])
    assert cfg.model.vocab_size == s["vocab"]
    with tempfile.TemporaryDirectory() as out:
        run(cfg, out)
        lines = [json.loads(x) for x in open(f"{out}/metrics.jsonl")]
    state = init_state(cfg.model, cfg.train)
    train_step = steps(cfg.model, cfg.train)[0]  # cached: the run's compiled step
    tokens = jax.device_put(jax.random.randint(jax.random.key(1), (s["batch"], s["seq"] + 1), 0, s["vocab"]))
    box, count = [state], [0]

    def one():
        count[0] += 1
        box[0], metrics = train_step(box[0], tokens, count[0])
        return metrics["loss"]

    step = summary(timed(one, jax_sync, warmup=2, iters=s["iters"], repeats=s["repeats"]))
    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    return {"run_tps": median_tps(lines), "step": step, "n_params": count_params(state.params),
            "matmul_gflops": matmul_gflops(lambda: mm(a), jax_sync), "impl": "train.loop.run / train.step"}


def peer(name: str, compiled: bool) -> dict:
    import math
    import tempfile
    import time

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES[name]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count()))
    torch.manual_seed(0)
    hf = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["mlp"],
                     num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["heads"],
                     max_position_embeddings=s["seq"], rms_norm_eps=1e-5, tie_word_embeddings=True,
                     attn_implementation="sdpa")
    model = LlamaForCausalLM(hf).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, betas=(0.9, 0.95), weight_decay=0.1)
    warm, total = 2, s["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (i + 1) / warm if i < warm else 0.1 + 0.9 * 0.5 * (
        1 + math.cos(math.pi * (i - warm) / max(1, total - warm))))
    tok_per_step = s["batch"] * s["seq"]
    gen = torch.Generator().manual_seed(0)

    def batch():
        tokens = torch.randint(0, s["vocab"], (s["batch"], s["seq"] + 1), generator=gen)
        return tokens[:, :-1], tokens[:, 1:]

    def loss_of(fwd, x, y):
        return F.cross_entropy(fwd(input_ids=x, use_cache=False).logits.float().reshape(-1, s["vocab"]), y.reshape(-1))

    def train_step(fwd, x, y):
        loss = loss_of(fwd, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return loss

    evals = [batch() for _ in range(s["eval_batches"])]
    tps, last = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for step in range(1, total + 1):
            loss = float(train_step(model, *batch()).detach())
            if step % s["eval_every"] == 0 or step == total:
                with torch.no_grad():
                    float(sum(loss_of(model, x, y) for x, y in evals) / len(evals))
            if step % s["checkpoint_every"] == 0 or step == total:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, f"{out}/ckpt.pt")
            now = time.perf_counter()
            tps.append(tok_per_step / (now - last))
            last = now
    x, y = batch()
    result = {"run_tps": sorted(tps)[len(tps) // 2], "n_params": n_params, "final_loss": loss, "impl": "eager"}
    result["step"] = summary(timed(lambda: train_step(model, x, y), lambda _: None, warmup=2, iters=s["iters"],
                                   repeats=s["repeats"]))
    if compiled:
        fwd = torch.compile(model)
        t0 = time.perf_counter()
        train_step(fwd, x, y)
        result["compile_s"] = time.perf_counter() - t0
        result["step_compiled"] = summary(timed(lambda: train_step(fwd, x, y), lambda _: None, warmup=1,
                                                iters=s["iters"], repeats=s["repeats"]))
    a = torch.ones(2048, 2048)
    result["matmul_gflops"] = matmul_gflops(lambda: a @ a, lambda _: None)
    return result


def main():
    p = parser(__doc__)
    p.add_argument("--shapes", default="study,d384", help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts per side")
    p.add_argument("--rounds", type=int, default=2, help="alternating ours/peer rounds per (shape, threads)")
    p.add_argument("--torch-compile", action="store_true",
                   help="also time the peer's step under torch.compile (inductor on CPU: minutes of compiling)")
    p.add_argument("--shape", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return emit(ours(args.shape) if args.side == "ours" else peer(args.shape, args.torch_compile))
    if args.full:
        raise SystemExit("bench/train_run.py measures CPUs; on a GPU use bench/train_step.py --full")
    for name in args.shapes.split(","):
        s = SHAPES[name]
        tokens = s["batch"] * s["seq"]
        for threads in map(int, args.threads.split(",")):
            rounds = {"ours": [], "peer": []}
            for r in range(args.rounds):
                for side in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
                    extra = ["--torch-compile"] if side == "peer" and args.torch_compile and r == 0 else []
                    rounds[side].append(run_side(__file__, side, ["--tiny", "--shape", name, *extra], threads=threads))
            o, q = (max(rounds[k], key=lambda x: x["run_tps"]) for k in ("ours", "peer"))
            os_, qs = (min((x["step"] for x in rounds[k]), key=lambda t: t["s"]) for k in ("ours", "peer"))
            os.environ["BENCH_CPU_THREADS"] = str(threads)  # what Report prints
            rep = Report(f"CPU training, whole run and bare step ({name}, {threads} thread{'s' * (threads > 1)})",
                         False, f"{ {k: v for k, v in s.items() if k not in ('iters', 'repeats')} }, float32")
            rep.row("whole run: median tokens/s (metrics.jsonl)", o["run_tps"], q["run_tps"], "tok/s")
            rep.row("bare step: tokens/s (best repeat)", tokens / os_["s"], tokens / qs["s"], "tok/s")
            compiled = [x for x in rounds["peer"] if "step_compiled" in x]
            if compiled:
                c = compiled[0]
                rep.row("bare step vs peer torch.compile", tokens / os_["s"], tokens / c["step_compiled"]["s"],
                        "tok/s")
                rep.note(f"torch.compile (inductor, CPU) took {c['compile_s']:.0f} s to compile the step")
            mo = max(x["matmul_gflops"] for x in rounds["ours"])
            mq = max(x["matmul_gflops"] for x in rounds["peer"])
            rep.row("2048^3 float32 matmul (XLA / torch)", mo, mq, "GFLOP/s")
            f = flops_per_token(o["n_params"], s)
            ach_o, ach_q = tokens / os_["s"] * f / 1e9, tokens / qs["s"] * f / 1e9
            rep.row("bare step achieved (6N + 12LHQT)", ach_o, ach_q, "GFLOP/s")
            rep.row("  as a fraction of its framework's matmul", ach_o / mo, ach_q / mq, "fraction")
            spreads = [x["step"]["spread"] for k in rounds for x in rounds[k]]
            rep.note(f"{o['n_params']:,} params (peer {q['n_params']:,}), {tokens} tokens per step; {args.rounds} "
                     f"alternating rounds, best of each side; whole runs: ours "
                     f"{[round(x['run_tps']) for x in rounds['ours']]}, "
                     f"peer {[round(x['run_tps']) for x in rounds['peer']]} tok/s; bare-step repeats differ by up to "
                     f"{max(spreads):.0%}")
            rep.append(args.results)


if __name__ == "__main__":
    sys.exit(main())

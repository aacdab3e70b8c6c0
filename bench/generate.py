"""Generation: greedy decoding of a batch with a KV cache, minimal_lm.generate vs HF `generate`.

Full shape (issue 7): batch 32, 128 prompt + 128 new tokens, SmolLM-135M (30 layers, d 576, 9 heads,
3 KV heads, MLP 1536, vocab 49152, tied), random bf16 weights. No EOS on either side, so every row
produces exactly max_new tokens. Peer: static and dynamic cache on a GPU (the faster is compared);
dynamic only on CPU, where HF's static cache is several times slower.
"""
from __future__ import annotations

import sys

from common import Report, emit, full_mode, parser, run_side, summary, timed, torch_device, torch_sync


def shape(full: bool) -> dict:
    if full:
        return dict(vocab=49152, d=576, layers=30, heads=9, kv_heads=3, mlp=1536, batch=32, prompt=128, new=128)
    return dict(vocab=1024, d=128, layers=4, heads=4, kv_heads=2, mlp=384, batch=4, prompt=32, new=32)


def schedule(full: bool) -> dict:
    """After one checked call (the compile); a GPU gets one more warm-up for torch.compile's recompiles."""
    return dict(warmup=int(full), iters=1, repeats=3 if full else 7)


def prompts(s: dict) -> list[list[int]]:
    import numpy as np

    return np.random.default_rng(0).integers(0, s["vocab"], (s["batch"], s["prompt"])).tolist()


def ours(s: dict, full: bool) -> dict:
    import jax

    from minimal_lm import ModelConfig, generate, init_params

    dtype = "bfloat16" if full else "float32"
    impls = ("xla", "cudnn") if jax.default_backend() == "gpu" else (None,)
    out = {}
    for impl in impls:
        cfg = ModelConfig(vocab_size=s["vocab"], d_model=s["d"], num_layers=s["layers"], num_heads=s["heads"],
                          num_kv_heads=s["kv_heads"], mlp_dim=s["mlp"], max_seq_len=s["prompt"] + s["new"],
                          tie_embeddings=True, dtype=dtype, param_dtype=dtype, attention_impl=impl)
        params = jax.jit(init_params, static_argnums=0)(cfg, jax.random.key(0))
        batch = prompts(s)
        try:
            rows = generate(params, cfg, batch, s["new"])
            if [len(r) for r in rows] != [s["new"]] * s["batch"]:
                raise RuntimeError(f"generated lengths {sorted({len(r) for r in rows})}, expected {s['new']}")
            out[str(impl or "auto")] = summary(timed(lambda: generate(params, cfg, batch, s["new"]), lambda _: None,
                                                     **schedule(full)))
        except Exception as e:  # one attention path failing on this GPU does not void the other
            out[str(impl or "auto")] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def peer(s: dict, full: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dev = torch_device()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if full else torch.float32
    hf = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["mlp"],
                     num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                     num_key_value_heads=s["kv_heads"], max_position_embeddings=s["prompt"] + s["new"],
                     rms_norm_eps=1e-5, tie_word_embeddings=True, attn_implementation="sdpa")
    model = LlamaForCausalLM(hf).to(dev, dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor(prompts(s), device=dev)
    mask = torch.ones_like(ids)
    out = {}
    for cache in ("static", "dynamic") if dev.type == "cuda" else ("dynamic",):
        kw = dict(max_new_tokens=s["new"], do_sample=False)
        if cache == "static":
            kw["cache_implementation"] = "static"

        def run():
            with torch.inference_mode():
                return model.generate(input_ids=ids, attention_mask=mask, **kw)

        try:
            n = run().shape[1] - s["prompt"]
            if n != s["new"]:
                raise RuntimeError(f"generated {n} tokens, expected {s['new']}")
            out[cache] = summary(timed(run, torch_sync, **schedule(full)))
        except Exception as e:
            out[cache] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def main():
    args = parser(__doc__).parse_args()
    if args.side:
        return emit((ours if args.side == "ours" else peer)(shape(not args.tiny), not args.tiny))
    full = full_mode(args)
    s = shape(full)
    argv = ["--full"] if full else ["--tiny"]
    rep = Report("Generation", full, f"{s}, {'bf16' if full else 'float32'}, greedy")
    o = run_side(__file__, "ours", argv)
    p = run_side(__file__, "peer", argv)
    new = s["batch"] * s["new"]
    good = lambda d: {k: v for k, v in d.items() if isinstance(v, dict) and "s" in v}  # noqa: E731
    for name, r in [*o.items(), *p.items()]:
        if isinstance(r, dict) and "error" in r:
            rep.note(f"{'ours' if name in o else 'peer'} {name} failed: {r['error']}")
    if not good(o) or not good(p):
        raise SystemExit("generation: no working configuration on one side (see the notes above)")
    best_o = min(good(o), key=lambda k: o[k]["s"])
    best_p = min(good(p), key=lambda k: p[k]["s"])
    for k in good(o):
        rep.row(f"new tok/s, ours attention={k} / peer {best_p} cache", new / o[k]["s"], new / p[best_p]["s"],
                "tok/s")
    for k in set(good(p)) - {best_p}:
        rep.row(f"new tok/s, ours attention={best_o} / peer {k} cache", new / o[best_o]["s"], new / p[k]["s"], "tok/s")
    ratio = rep.row("seconds per call (best of each side)", o[best_o]["s"], p[best_p]["s"], "s",
                    higher_is_better=False)
    spread = max(r["spread"] for r in [*good(o).values(), *good(p).values()])
    rep.note(f"noise: repeats differ by up to {spread:.0%}; times include the prompt's prefill")
    if full:
        rep.note(f"target: 2x the peer; got {ratio:.2f}x")
    rep.append(args.results)


if __name__ == "__main__":
    sys.exit(main())

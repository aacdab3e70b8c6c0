"""Loading: a sharded safetensors checkpoint in HF layout, minimal_lm.from_pretrained vs
transformers' LlamaForCausalLM.from_pretrained, each in a fresh process: seconds and peak host RSS.

Full shape (issue 7): Llama-3-8B (16 GB in bf16, 5 GB shards), loaded onto the GPU. Tiny: a ~0.3 GB
model on CPU, large enough that the ratio of peak RSS to checkpoint bytes means something. The
checkpoint is written with the `safetensors` package (tensor names and shapes from transformers on
the meta device, random bf16 values) and dropped from the page cache before each cold load.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from common import Report, emit, full_mode, parser, peak_rss_bytes, run_side

SHARD_BYTES = 5 * 2**30


def shape(full: bool) -> dict:
    if full:
        return dict(vocab=128256, d=4096, layers=32, heads=32, kv_heads=8, mlp=14336)
    return dict(vocab=32000, d=1024, layers=8, heads=16, kv_heads=4, mlp=2816)


def hf_config(s: dict):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["mlp"],
                       num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                       num_key_value_heads=s["kv_heads"], rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, max_position_embeddings=8192)


def write_checkpoint(path: str, s: dict, shard_bytes: int) -> int:
    """HF-layout sharded checkpoint (index + shards + config.json) of random bf16 weights; its bytes."""
    import torch
    import transformers
    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    cfg = hf_config(s)
    cfg.architectures = ["LlamaForCausalLM"]
    setattr(cfg, "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype", "bfloat16")
    with torch.device("meta"):
        names = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    pool = (torch.randn(2**24, generator=gen) * 0.02).to(torch.bfloat16)

    def tensor(shape):
        n = 1
        for d in shape:
            n *= d
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        start = int(torch.randint(0, pool.numel(), (1,), generator=gen))
        reps = -(-(n + start) // pool.numel())
        return pool.repeat(reps)[start:start + n].reshape(shape)

    shards, cur, size = [], [], 0
    for name, shp in names.items():
        nbytes = 2 * int(torch.tensor(shp).prod()) if shp else 2
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += nbytes
    shards.append(cur)
    os.makedirs(path, exist_ok=True)
    weight_map, total = {}, 0
    for i, shard in enumerate(tqdm(shards, desc="writing shards", unit="shard")):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensor(names[n]) for n in shard}, os.path.join(path, fname), metadata={"format": "pt"})
        total += os.path.getsize(os.path.join(path, fname))
        weight_map.update({n: fname for n in shard})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    cfg.save_pretrained(path)
    return total


def drop_page_cache(path: str):
    """Flush and evict the checkpoint's pages (per file, no root needed) so the next load reads the disk."""
    for name in os.listdir(path):
        fd = os.open(os.path.join(path, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def ours(path: str) -> dict:
    import jax

    from minimal_lm import from_pretrained
    jax.block_until_ready(jax.numpy.zeros(1))
    base = peak_rss_bytes()
    t0 = time.perf_counter()
    pre = from_pretrained(path)
    jax.block_until_ready(pre.params)
    seconds = time.perf_counter() - t0
    n = sum(a.size for a in jax.tree.leaves(pre.params))
    return {"s": seconds, "peak_rss": peak_rss_bytes(), "base_rss": base, "n_params": int(n),
            "device": str(jax.tree.leaves(pre.params)[0].devices())}


def peer(path: str) -> dict:
    import torch
    from transformers import LlamaForCausalLM

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        torch.zeros(1, device=dev)
    base = peak_rss_bytes()
    t0 = time.perf_counter()
    if dev == "cuda":
        how = "device_map='cuda'"
        try:
            model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map=dev)
        except (ImportError, ValueError) as e:
            how = f"loaded on CPU, then .to('cuda') (device_map failed: {e})"[:200]
            model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(dev)
        torch.cuda.synchronize()
    else:
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
        with torch.no_grad():
            touched = sum(float(p.sum(dtype=torch.float32)) for p in model.parameters())
        how = f"loaded on CPU; every parameter read once inside the timing (mmap pages in; sum {touched:.3g})"
    seconds = time.perf_counter() - t0
    n = sum(p.numel() for p in model.parameters())
    return {"s": seconds, "peak_rss": peak_rss_bytes(), "base_rss": base, "n_params": int(n), "how": how}


def main():
    p = parser(__doc__)
    p.add_argument("--path", help="side: the checkpoint directory")
    p.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    p.add_argument("--warm", action="store_true", help="also time a second load with the page cache warm")
    args = p.parse_args()
    if args.side:
        return emit((ours if args.side == "ours" else peer)(args.path))
    full = full_mode(args)
    s = shape(full)
    tmp = tempfile.mkdtemp(prefix="bench-load-", dir=args.dir)
    try:
        t0 = time.perf_counter()
        size = write_checkpoint(tmp, s, SHARD_BYTES if full else 64 * 2**20)
        n_shards = len([f for f in os.listdir(tmp) if f.endswith(".safetensors")])
        rep = Report("Loading", full, f"{s}, bf16, {size / 2**30:.2f} GiB in {n_shards} shards "
                                      f"(written in {time.perf_counter() - t0:.0f} s)")
        argv = ["--path", tmp] + (["--full"] if full else ["--tiny"])
        runs = [("cold", True)] + ([("warm", False)] if args.warm else [])
        for label, cold in runs:
            r = {}
            for side in ("ours", "peer"):
                if cold:
                    drop_page_cache(tmp)
                r[side] = run_side(__file__, side, argv)
            o, q = r["ours"], r["peer"]
            rep.row(f"load seconds ({label} cache)", o["s"], q["s"], "s", higher_is_better=False)
            rep.row(f"peak RSS / checkpoint bytes ({label})", o["peak_rss"] / size, q["peak_rss"] / size, "x",
                    higher_is_better=False)
            rep.row(f"(peak - baseline RSS) / checkpoint bytes ({label})", (o["peak_rss"] - o["base_rss"]) / size,
                    (q["peak_rss"] - q["base_rss"]) / size, "x", higher_is_better=False)
        rep.note(f"baseline RSS (runtime loaded, before the checkpoint): ours {o['base_rss'] / 2**30:.2f} GiB, "
                 f"peer {q['base_rss'] / 2**30:.2f} GiB; ours placed params on {o['device']}; peer {q['how']}")
        if o["n_params"] != q["n_params"]:
            rep.note(f"parameter counts differ: ours {o['n_params']}, peer {q['n_params']}")
        if full:
            rep.note(f"target: peak host memory <= 1.3x the checkpoint's bytes; got {o['peak_rss'] / size:.2f}x")
        rep.append(args.results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

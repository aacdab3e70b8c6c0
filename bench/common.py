"""Shared benchmark plumbing: shape mode, one subprocess per side, timing, peak RSS, reporting.

Each benchmark runs our side and the peer's (Hugging Face transformers on PyTorch) in separate
subprocesses, so neither framework's allocator, thread pool or compile cache affects the other, and
an 8B model on each side fits one GPU in turn. The parent prints our figure, the peer's and the ratio,
and appends them to a results file when asked.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H100_PEAK_FLOPS = 989e12
"""Dense bf16 peak of an H100/H200 SXM, the MFU denominator the issue fixes."""


HOST_MALLOC = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:"
               "glibc.malloc.hugetlb=1")
"""glibc malloc settings that `make demo` (the Makefile's HOST_MALLOC) and each benchmark side (ours and the peer
alike) run with: one arena, no mmap for large blocks, no trimming, transparent huge pages. XLA:CPU allocates each
training step's scratch as one block (75 MB at the study's shape, ~500 MB at 6 layers d 384); by default glibc
maps it afresh and unmaps it every step: 18-22K page faults per step at the study's shape, ~20% of its step on
one core. With these the block is reused (0-30 faults per step); PyTorch's step is within 2% either way
(bench/RESULTS.md, 2026-12-02). glibc reads them at process start; hugetlb needs glibc >= 2.35."""


def flops_per_token(n_params: int, s: dict) -> float:
    """Training FLOPs per token of a shape dict (layers, heads, d, seq): 6N + 12*L*H*Q*T (PaLM appendix B;
    nanoGPT's estimate_mfu), N the parameter count (a tied embedding counted once, as the unembedding)."""
    return 6 * n_params + 12 * s["layers"] * s["heads"] * (s["d"] // s["heads"]) * s["seq"]


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--full", action="store_true", help="the issue's full shapes (default: on a GPU)")
    p.add_argument("--tiny", action="store_true", help="tiny CPU shapes even on a GPU")
    p.add_argument("--results", help="append a markdown section with the figures to this file")
    p.add_argument("--side", choices=("ours", "peer"), help=argparse.SUPPRESS)
    return p


def gpu_available() -> bool:
    """A CUDA GPU that both JAX and torch can see, probed in a child so this process stays free."""
    code = ("import jax, torch; print(jax.default_backend() == 'gpu' and torch.cuda.is_available())")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env=child_env())
    except subprocess.TimeoutExpired:
        return False
    return out.stdout.strip().endswith("True")


def full_mode(args) -> bool:
    if args.full and args.tiny:
        raise SystemExit("--full and --tiny exclude each other")
    return args.full or (not args.tiny and gpu_available())


def cpu_threads(full: bool) -> int:
    """Threads per side on CPU: BENCH_CPU_THREADS, else 1 at tiny shapes (0: each framework's default).
    One thread each keeps the ratio stable on a shared machine: two OpenMP/Eigen pools spinning on
    two busy cores swing the figures by 10x from run to run."""
    return int(os.environ.get("BENCH_CPU_THREADS", "0" if full else "1"))


def child_env(threads: int = 0) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.9")
    env.setdefault("GLIBC_TUNABLES", HOST_MALLOC)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        flags = f"--xla_cpu_multi_thread_eigen={str(threads > 1).lower()} intra_op_parallelism_threads={threads}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flags}".strip()
    return env


def run_side(script: str, side: str, argv: list[str], timeout: int = 900, threads: int | None = None) -> dict:
    """Run `script --side side` in a fresh interpreter; its last stdout line is a JSON dict. With `threads`
    (default cpu_threads()) below the machine's cores the child is also pinned to that many CPUs: JAX sizes
    its CPU thread pool from the affinity mask, and XLA_FLAGS alone leave it on every core."""
    cmd = [sys.executable, script, "--side", side, *argv]
    label = f"{os.path.basename(script)} --side {side}"
    t0 = time.perf_counter()
    print(f"   ({label} ...)", file=sys.stderr, flush=True)
    threads = cpu_threads("--full" in argv) if threads is None else threads
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = (lambda: os.sched_setaffinity(0, cpus[-threads:])) if 0 < threads < len(cpus) else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(threads), timeout=timeout,
                          preexec_fn=pin)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{label}: failed with exit code {proc.returncode}")
    result = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - t0
    print(f"   ({label}: {result['process_s']:.0f} s)", file=sys.stderr, flush=True)
    return result


def emit(result: dict):
    """The child's answer to run_side: one JSON line, last on stdout."""
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def timed(step: Callable[[], object], sync: Callable[[object], None], *, warmup: int, iters: int,
          repeats: int) -> list[float]:
    """Seconds per call, one figure per repeat of `iters` calls; `sync` blocks on the last result
    only, so asynchronous dispatch overlaps calls as it would in a real loop."""
    out = None
    for _ in range(warmup):
        out = step()
    sync(out)
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = step()
        sync(out)
        per_call.append((time.perf_counter() - t0) / iters)
    return per_call


def jax_sync(out):
    import jax

    jax.block_until_ready(out)


def torch_sync(out):
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def summary(per_call: list[float]) -> dict:
    """Best seconds per call over the repeats (as timeit: other processes only ever add time), the
    median, and the spread of the repeats (max/min - 1) as a noise figure."""
    return {"s": min(per_call), "median": statistics.median(per_call), "spread": max(per_call) / min(per_call) - 1,
            "repeats": per_call}


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM, which starts afresh at exec (getrusage's
    ru_maxrss would inherit the parent's peak across fork)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine() -> str:
    """CPU model and cores, plus the GPU's name when there is one."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        gpu = []
    return desc + (f"; GPU: {gpu[0]} x{len(gpu)}" if gpu else "; no GPU")


def versions() -> str:
    code = ("import sys, jax, torch, transformers; print(f'Python {sys.version.split()[0]}, jax {jax.__version__}, "
            "torch {torch.__version__}, transformers {transformers.__version__}')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env())
    return out.stdout.strip() or "versions unknown"


class Report:
    """Rows of (what, ours, peer, ratio) printed as they come and optionally appended as markdown."""

    def __init__(self, title: str, full: bool, shapes: str):
        threads = cpu_threads(full)
        shapes += f"; CPU threads per side: {threads or 'framework default'}"
        self.title, self.full, self.shapes, self.rows, self.notes = title, full, shapes, [], []
        self.load = _loadavg()
        print(f"== {title} ({'full' if full else 'tiny CPU'} shapes: {shapes})", flush=True)

    def row(self, what: str, ours: float | None, peer: float | None, unit: str, higher_is_better: bool | None = True):
        """One comparison; the ratio is oriented so that > 1 means ours is better (None: no ratio)."""
        ratio = None
        if ours and peer and higher_is_better is not None:
            ratio = ours / peer if higher_is_better else peer / ours
        self.rows.append((what, ours, peer, unit, ratio))
        print(f"{what:<48} ours {_fmt(ours):>12} {unit:<10} peer {_fmt(peer):>12} {unit:<10} "
              f"ratio {_ratio(ratio):>7}", flush=True)
        return ratio

    def note(self, text: str):
        self.notes.append(text)
        print(f"   {text}", flush=True)

    def append(self, path: str | None):
        if not path:
            return
        lines = [f"\n### {self.title}: {'full' if self.full else 'tiny CPU'} shapes, "
                 f"{datetime.datetime.now().isoformat(timespec='minutes')}\n",
                 f"Machine: {machine()}. {versions()}. Load average (1 min) at start / end: "
                 f"{self.load} / {_loadavg()}.\n",
                 f"Shapes: {self.shapes}\n", "| what | ours | peer | unit | ratio (>1: ours better) |",
                 "|---|---|---|---|---|"]
        lines += [f"| {w} | {_fmt(o)} | {_fmt(p)} | {u} | {_ratio(r)} |" for w, o, p, u, r in self.rows]
        lines += [""] + [f"- {n}" for n in self.notes]
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def _ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def _fmt(x):
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.4g}" if x == 0 or abs(x) >= 0.01 else f"{x:.3e}"

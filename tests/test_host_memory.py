"""The glibc malloc settings `make demo` and the benchmarks use (bench/common.HOST_MALLOC): the study's training step
then reuses its XLA scratch block, at a small fraction of the page faults per step it
takes by default. Each side runs in a fresh interpreter: glibc reads them at start-up."""
import json
import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from common import HOST_MALLOC  # noqa: E402

CHILD = r"""
import json, resource
import jax
from train.config import load_config
from train.step import init_state, steps
cfg = load_config("configs/tiny_rope.py", [])  # the study's shapes: a 75 MB XLA scratch block per step
state = init_state(cfg.model, cfg.train)
step = steps(cfg.model, cfg.train)[0]
tokens = jax.random.randint(jax.random.key(0), (cfg.train.batch_size, cfg.train.seq_len + 1), 0, cfg.model.vocab_size)
for i in range(5):
    if i == 2:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, m = step(state, tokens, i)
    m["loss"].block_until_ready()
print(json.dumps({"faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 3}))
"""


def _faults(tunables: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["JAX_PLATFORMS"] = "cpu"
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["faults"]


def _thp() -> str:
    try:
        return open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return ""


def _glibc() -> tuple[int, ...]:
    name, version = platform.libc_ver()
    return tuple(int(x) for x in version.split(".")) if name == "glibc" and version else ()


@pytest.mark.skipif(_glibc() < (2, 35) or "[never]" in _thp() or not _thp(),
                    reason="needs glibc >= 2.35 (malloc hugetlb tunable) and transparent huge pages not 'never'")
def test_host_malloc_cuts_the_steps_page_faults():
    plain, tuned = _faults(None), _faults(HOST_MALLOC)
    assert plain > 10000, plain  # 75 MB of fresh 4 KB pages per step
    assert tuned < plain / 10, (tuned, plain)


def test_makefile_sets_the_same_host_malloc():
    """`make demo` and the benchmarks run with one setting: the Makefile's HOST_MALLOC is bench/common's."""
    with open(os.path.join(ROOT, "Makefile")) as f:
        lines = [ln for ln in f if ln.startswith("HOST_MALLOC :=")]
    assert len(lines) == 1, lines
    assert lines[0].split(":=", 1)[1].strip() == HOST_MALLOC

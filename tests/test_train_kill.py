"""A training process killed mid-run (SIGKILL) and restarted with the same command ends with the
params of an uninterrupted run."""
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from minimal_lm.run_dir import load_run
from train import load_config, read_metrics, run

ROOT = Path(__file__).parents[1]
ARGS = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=64", "train.seq_len=48",
        "train.batch_size=8", "train.steps=300", "train.warmup_steps=10", "train.eval_every=100",
        "train.checkpoint_every=7", "train.progress=false"]


def completed_steps(out: Path) -> list[int]:
    d = out / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


@pytest.mark.slow
def test_killed_process_resumes_exactly(tmp_path):
    cmd = [sys.executable, "-m", "train", "--config", str(ROOT / "configs" / "tiny_rope.py"),
           "--out", str(tmp_path / "killed"), *ARGS]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while proc.poll() is None and max(completed_steps(tmp_path / "killed"), default=0) < 30:
        assert time.time() < deadline, "the training subprocess made no checkpoint in time"
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    killed_at = read_metrics(tmp_path / "killed")[-1]["step"]
    assert killed_at < 300, "the subprocess finished before it could be killed"

    cfg = load_config(ROOT / "configs" / "tiny_rope.py", ARGS)
    run(cfg, tmp_path / "killed")
    run(cfg, tmp_path / "straight")
    assert [m["step"] for m in read_metrics(tmp_path / "killed")] == list(range(1, 301))
    a, b = load_run(tmp_path / "killed")[1], load_run(tmp_path / "straight")[1]
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))

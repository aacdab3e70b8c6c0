"""Multi-process training for real: two local processes joined by jax.distributed (a coordinator on
localhost, JAX's gloo CPU collectives), two simulated CPU devices each, started with the documented
`python -m train --distributed` and the JAX_* variables: they train like one process (within 1e-5; one
process of one device, as tests/test_sharding.py checks one device against a 4-device mesh), process 0
alone writes metrics (each step once), and their checkpoint resumes in one single-device process (this one,
which shares its compiled step with the reference run)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from minimal_lm.run_dir import load_run
from train import read_metrics, run
from train_testlib import TINY, tiny

ROOT = Path(__file__).parents[1]
SHORT = ["train.steps=6", "train.checkpoint_every=2", "train.eval_every=2", "train.log_every=1"]
ARGS = ["--config", str(ROOT / "configs" / "tiny_rope.py"), *TINY, *SHORT]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def train_process(out, process: int, port: int):
    """Process `process` of 2, with 2 simulated CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process))
    cmd = [sys.executable, "-m", "train", "--distributed", "--out", str(out), *ARGS, "train.stop_after=4"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs, timeout=300, code=0):
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == code, err[-3000:]
    return outs


# 75-115 s here on 2 shared cores (about 80 CPU-s: 4 processes' imports and compiles): inside the CI budget
def test_two_processes_train_like_one_and_resume_in_one(tmp_path):
    port = free_port()
    outs = finish(*(train_process(tmp_path / "multi", i, port) for i in (0, 1)))
    assert all("step 4," in out for out, _ in outs), outs  # both processes end with the same summary
    assert [m["step"] for m in read_metrics(tmp_path / "multi")] == [1, 2, 3, 4], "process 0 alone logs"
    assert not (tmp_path / "multi" / ".lock").exists()
    assert len(jax.devices()) == 1
    run(tiny(*SHORT), tmp_path / "multi")  # resumed at step 4 by one process on one device
    run(tiny(*SHORT), tmp_path / "one")  # the reference, uninterrupted
    multi, one = read_metrics(tmp_path / "multi"), read_metrics(tmp_path / "one")
    assert [m["step"] for m in multi] == [m["step"] for m in one] == list(range(1, 7))
    for key in ("loss", "eval_loss"):
        a, b = [m.get(key, np.nan) for m in multi], [m.get(key, np.nan) for m in one]
        np.testing.assert_allclose(a, b, rtol=1e-5, err_msg=key)
    for step in (4, 6):
        pm, po = load_run(tmp_path / "multi", step=step)[1], load_run(tmp_path / "one", step=step)[1]
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for a, b in zip(jax.tree.leaves(pm), jax.tree.leaves(po)))
        assert diff < 1e-4, (step, diff)
    assert json.loads((tmp_path / "multi" / "config.json").read_text())["train"]["steps"] == 6


def test_a_refusal_on_process_0_stops_every_process(tmp_path):
    """Process 0 alone takes the run directory's lock; when it is refused, the others exit too (with its
    message) rather than wait for it in a collective."""
    from train.checkpoint import hold

    port = free_port()
    with hold(tmp_path / "multi"):
        outs = finish(*(train_process(tmp_path / "multi", i, port) for i in (0, 1)), timeout=200, code=2)
    for _, err in outs:
        assert f"in use by pid {os.getpid()} on host {socket.gethostname()}" in err, err[-2000:]
    assert "process 0: " in outs[1][1]

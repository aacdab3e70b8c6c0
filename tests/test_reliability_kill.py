"""kill -9 of a probing training process, several times at random steps and once inside a checkpoint
save (after its files are written, before orbax's commit rename): each rerun of the same command
resumes from the newest complete checkpoint, and the end state, metrics and probe records equal an
uninterrupted run's exactly. Slow: five processes each compile the step."""
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm.run_dir import checkpoint_steps
from probes.records import read_records
from train import load_config, read_metrics, run
from train.checkpoint import checkpoint_manager, restore
from train.step import init_state

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "tiny_rope.py"
ARGS = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=64", "train.seq_len=48",
        "train.batch_size=8", "train.steps=60", "train.warmup_steps=5", "train.eval_every=10",
        "train.checkpoint_every=7", "train.eval_batches=1", "train.progress=false"]
STEPS, SAVE_KILLED = 60, 14

CHILD = """
    import os, signal, sys
    out, kill_at_commit = sys.argv[1], int(sys.argv[2])
    rename = os.rename

    def dying_rename(src, dst, *a, **k):
        if "orbax-checkpoint-tmp" in str(src) and os.path.basename(str(dst)) == str(kill_at_commit):
            os.kill(os.getpid(), signal.SIGKILL)
        return rename(src, dst, *a, **k)

    os.rename = dying_rename
    sys.path[:0] = [{root!r}, {tests!r}]
    from test_reliability_kill import config, probe_hook
    from train import checkpoint, run

    resume = checkpoint.resume

    def announce(*a, **k):
        step, state = resume(*a, **k)
        print("resumed", step, flush=True)
        return step, state

    checkpoint.resume = announce
    run(config(), out, hooks=(probe_hook(out),))
"""


def config():
    return load_config(CONFIG, ARGS)


def probe_hook(out):
    """A probe record of two held-out rows at each evaluation (train -> probes, as a study does)."""
    from probes.records import TrainingProbe
    from train.data import make_source

    cfg = config()
    probe = TrainingProbe(cfg.model, make_source(cfg.data).eval_batch(0, 2, cfg.train.seq_len)[:, :-1])

    def hook(step, params):
        probe(out, params, step, step * cfg.train.batch_size * cfg.train.seq_len)
    return hook


def start(script, out, kill_at_commit=-1):
    return subprocess.Popen([sys.executable, str(script), str(out), str(kill_at_commit)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def last_logged(out):
    lines = read_metrics(out) if (out / "metrics.jsonl").is_file() else []
    return lines[-1]["step"] if lines else 0


def check_resumed(proc, out_text, expected):
    assert f"resumed {expected}\n" in out_text, (expected, out_text, proc.stderr.read()[-2000:])


@pytest.mark.slow
def test_repeated_kills_lose_nothing(tmp_path):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD.format(root=str(ROOT), tests=str(Path(__file__).parent))))
    out = tmp_path / "killed"

    proc = start(script, out, kill_at_commit=SAVE_KILLED)
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert (out / "checkpoints" / f"{SAVE_KILLED}.orbax-checkpoint-tmp").is_dir(), "not killed inside the save"
    assert SAVE_KILLED not in checkpoint_steps(out)

    kills = []
    for _ in range(3):
        newest, lo = checkpoint_steps(out)[-1], last_logged(out) + 2
        target = rng.randint(lo, min(lo + 12, STEPS - 8))
        proc = start(script, out)
        deadline = time.time() + 300
        while proc.poll() is None and last_logged(out) < target:
            assert time.time() < deadline, "the training process made no progress"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, f"finished before the kill (seed {seed})"
        check_resumed(proc, proc.stdout.read(), newest)
        kills.append((newest, last_logged(out)))

    newest = checkpoint_steps(out)[-1]
    proc = start(script, out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    check_resumed(proc, proc.stdout.read(), newest)
    assert not list((out / "checkpoints").glob("*tmp*")), "a half-written checkpoint was left behind"

    straight = tmp_path / "straight"
    run(config(), straight, hooks=(probe_hook(straight),))
    keys = ("step", "loss", "lr", "grad_norm", "eval_loss")
    got, want = ([[m.get(k) for k in keys] for m in read_metrics(d)] for d in (out, straight))
    assert [m[0] for m in got] == list(range(1, STEPS + 1)), f"kills {kills}, seed {seed}"
    assert got == want, f"kills {kills}, seed {seed}"
    like = init_state(config().model, config().train)
    states = []
    for d in (out, straight):
        with checkpoint_manager(d) as mngr:
            states.append(restore(mngr, STEPS, like))
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), *states)
    assert all(jax.tree.leaves(same)), f"params or optimizer state differ (kills {kills}, seed {seed})"
    records = [read_records(d) for d in (out, straight)]
    assert [r.step for r in records[0]] == [r.step for r in records[1]] == list(range(10, STEPS + 1, 10))
    for a, b in zip(*records):
        assert a.tokens_seen == b.tokens_seen and a.summary == b.summary
        assert all(np.array_equal(a.norms[s], b.norms[s]) for s in b.norms)

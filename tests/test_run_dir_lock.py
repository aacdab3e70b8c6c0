"""One run directory, one writer: a second `python -m train` or `python -m probes study` on a directory in
use is refused at once, naming the holder's pid and host; the lock dies with its holder (kill -9 blocks no
rerun), is re-entrant within a process (the study holds each scheme's directory around its training run)
and is gone after a clean exit."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from probes.__main__ import main as probes_main
from probes.study import load_study, run_study
from train import read_metrics, run
from train.__main__ import main as train_main
from train.checkpoint import LOCK, RunDirBusy, RunDirConflict, hold
from train_testlib import CONFIGS, TINY, tiny

ROOT = Path(__file__).parents[1]
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
HOLDER = """
import sys, time
from train.checkpoint import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""
STUDY = ["model.d_model=32", "model.num_heads=2", "train.seq_len=32", "train.batch_size=4", "train.steps=4",
         "train.warmup_steps=1", "train.progress=false", "study.probe_every=2", "study.probe_rows=2",
         "study.schemes=rope", "study.disrupt_tasks=none"]


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def holder(procs, path) -> subprocess.Popen:
    """A process holding `path`'s lock until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         text=True)
    procs.append(p)
    assert p.stdout.readline() == "held\n"
    return p


def refused(call, capsys, pid) -> str:
    """`call` (a CLI main) exits with code 2 at once, naming the holder's pid and host."""
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert time.perf_counter() - t0 < 20, "refused, but not at once"
    assert f"pid {pid} on host {socket.gethostname()}" in err and "in use" in err, err
    return err


def kill9(p):
    p.kill()  # SIGKILL: no cleanup runs, the lock file stays behind with the dead holder's pid
    p.wait()


def test_second_train_is_refused_and_a_killed_holder_blocks_no_rerun(tmp_path, procs, capsys):
    out = tmp_path / "run"
    first = holder(procs, out)
    args = ["--config", str(CONFIGS / "tiny_rope.py"), "--out", str(out), *TINY]
    refused(lambda: train_main(args), capsys, first.pid)
    with pytest.raises(RunDirBusy, match=f"pid {first.pid} on host"):
        run(tiny(), out)
    kill9(first)
    assert json.loads((out / LOCK).read_text())["pid"] == first.pid  # stale, and blocks nothing:
    assert run(tiny(), out)["step"] == 40
    assert not (out / LOCK).exists()


@pytest.mark.slow
def test_a_training_process_holds_its_directory_until_killed(tmp_path, procs, capsys):
    """The issue's case: a second `python -m train` on the --out of one that is training."""
    out = tmp_path / "run"
    args = ["--config", str(CONFIGS / "tiny_rope.py"), "--out", str(out), *TINY, "train.steps=100000",
            "train.checkpoint_every=5"]
    first = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    procs.append(first)
    deadline = time.time() + 300
    while not read_metrics(out):  # training, so holding the lock
        assert first.poll() is None, first.stderr.read()[-2000:]
        assert time.time() < deadline, "the first run logged nothing in time"
        time.sleep(0.05)
    refused(lambda: train_main(args), capsys, first.pid)
    kill9(first)
    done = read_metrics(out)[-1]["step"]
    result = run(tiny("train.steps=100000", "train.checkpoint_every=5", f"train.stop_after={done + 5}"), out)
    assert result["step"] == done + 5
    assert not (out / LOCK).exists()


def test_second_study_is_refused_and_a_killed_one_leaves_the_lock_free(tmp_path, procs, capsys):
    out = tmp_path / "study"
    first = holder(procs, out)  # as a study does, from its start to its report
    args = ["study", "--config", str(CONFIGS / "study_default.py"), "--out", str(out), *STUDY]
    refused(lambda: probes_main(args), capsys, first.pid)
    kill9(first)
    assert json.loads((out / LOCK).read_text())["pid"] == first.pid
    with hold(out):  # what run_study takes first (the rerun itself: the slow test below)
        pass


@pytest.mark.slow
def test_a_study_reruns_after_its_holder_is_killed_and_holds_the_scheme_it_trains(tmp_path, procs):
    out = tmp_path / "study"
    kill9(holder(procs, out))
    study = load_study(CONFIGS / "study_default.py", STUDY)
    run_study(study, out, progress=False, report=False)
    assert [m["step"] for m in read_metrics(out / "rope")][-1] == 4
    assert not list(out.rglob(LOCK))
    first = holder(procs, out / "rope")  # a `python -m train --out STUDY/rope`, say
    with pytest.raises(RunDirBusy, match=f"{out / 'rope'} is in use by pid {first.pid} on host"):
        run_study(study, out, progress=False, report=False)
    assert not (out / LOCK).exists(), "the study let go of its own directory"


def test_the_lock_is_reentrant_in_a_process_and_refuses_others(tmp_path, procs):
    path = tmp_path / "run"
    with hold(path):
        with hold(path):
            assert (path / LOCK).exists()
            assert json.loads((path / LOCK).read_text())["pid"] == os.getpid()
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, env=ENV, capture_output=True,
                               text=True, timeout=120)
        assert probe.returncode == 1 and f"pid {os.getpid()} on host" in probe.stderr, probe.stderr[-2000:]
        assert (path / LOCK).exists(), "still held after the inner block"
    assert not (path / LOCK).exists()
    with hold(path):  # and it can be taken again
        pass
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirConflict, match="is a file"):
        with hold(tmp_path / "file"):
            pass

"""Damaged checkpoints and run directories, provoked for real on a tiny run: a truncated, deleted or
bit-flipped file in the newest checkpoints is named, set aside, and the run resumes from the newest good
one to the same params as an uninterrupted run; nothing ever silently starts over."""
import json
import os
import shutil
from pathlib import Path

import jax
import pytest

from minimal_lm import CheckpointError
from minimal_lm.run_dir import checkpoint_steps, load_run
from train import read_metrics, run
from train.checkpoint import CORRUPT, CheckpointWarning, RunDirConflict, open_run_dir, resume
from train.step import init_state
from train_testlib import same_params, tiny


def biggest_file(step_dir: Path, item: str) -> Path:
    return max((f for f in (step_dir / item).rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def truncate(step_dir):
    f = biggest_file(step_dir, "params")
    os.truncate(f, f.stat().st_size // 2)


def delete(step_dir):
    biggest_file(step_dir, "opt_state").unlink()


def flip_bit(step_dir):
    """One bit in the middle of the compressed params data: orbax restores it without complaint."""
    f = biggest_file(step_dir, "params")
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run(tiny(), out)
    assert checkpoint_steps(out) == [10, 20, 30, 40]
    return out


@pytest.fixture
def copy(ref, tmp_path):
    return Path(shutil.copytree(ref, tmp_path / "run"))


def test_damaged_newest_checkpoints_are_named_set_aside_and_the_run_resumes_exactly(ref, copy):
    ckpts = copy / "checkpoints"
    truncate(ckpts / "40")
    delete(ckpts / "30")
    flip_bit(ckpts / "20")
    with pytest.warns(CheckpointWarning) as warned:
        run(tiny(), copy)
    messages = [str(w.message) for w in warned if w.category is CheckpointWarning]
    assert len(messages) == 3
    for step, why in ((40, "cannot restore"), (30, "cannot restore"), (20, "does not match its checksum")):
        m = next(m for m in messages if m.startswith(f"checkpoint {ckpts / str(step)} is damaged"))
        assert why in m and f"moved it to {copy / CORRUPT / str(step)}" in m and "resumed from step 10" in m
    assert sorted(int(p.name) for p in (copy / CORRUPT).iterdir()) == [20, 30, 40]
    assert checkpoint_steps(copy) == [10, 20, 30, 40]
    assert same_params(load_run(ref)[1], load_run(copy)[1])
    keys = ("step", "loss", "lr", "grad_norm", "eval_loss")
    got, want = ([[m.get(k) for k in keys] for m in read_metrics(d)] for d in (copy, ref))
    assert got == want


def test_save_killed_before_its_commit_and_a_cut_off_metrics_line(ref, copy):
    """The files a kill -9 leaves mid-save (tests/test_reliability_kill.py makes them for real): orbax's
    uncommitted temporary directory and half a metrics line."""
    (copy / "checkpoints" / "40").rename(copy / "checkpoints" / "40.orbax-checkpoint-tmp")
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 41, "lo')
    run(tiny(), copy)
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["10", "20", "30", "40"]
    assert [m["step"] for m in read_metrics(copy)] == list(range(1, 41))
    assert same_params(load_run(ref)[1], load_run(copy)[1])


def test_no_restorable_checkpoint_stops_and_moves_nothing(copy):
    for step in (10, 20, 30, 40):
        truncate(copy / "checkpoints" / str(step))
    metrics = (copy / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError) as e:
        run(tiny(), copy)
    msg = str(e.value)
    assert "no checkpoint could be restored" in msg and "train.overwrite=true" in msg
    assert all(f"checkpoints/{s}: cannot restore" in msg for s in (10, 20, 30, 40))
    assert checkpoint_steps(copy) == [10, 20, 30, 40] and not (copy / CORRUPT).exists()
    assert (copy / "metrics.jsonl").read_text() == metrics


def test_deleted_checkpoints_never_start_over_silently(copy):
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(CheckpointError, match=r"metrics.jsonl reaches step 40 but no checkpoint is left.*"
                                              r"train.overwrite=true"):
        run(tiny(), copy)
    assert read_metrics(copy)[-1]["step"] == 40


def test_bit_flip_is_caught_by_the_checksum_when_loading(copy):
    flip_bit(copy / "checkpoints" / "40")
    with pytest.raises(CheckpointError, match=r"checkpoints/40/params: data of .* does not match its checksum"):
        load_run(copy)
    assert load_run(copy, step=30)[0] == tiny().model


def test_checkpoint_of_another_model_is_refused_naming_the_leaves(copy):
    cfg = json.loads((copy / "config.json").read_text())
    cfg["model"]["d_model"] = 48
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"checkpoints/40: cannot restore params .* another model "
                                              r"\(embed: stored \[264, 32\] float32, expected \[264, 48\] float32"):
        load_run(copy)
    with pytest.raises(CheckpointError, match=r"checkpoints/40: params do not fit this config: "
                                              r"embed: stored \[264, 32\] float32, expected \[264, 48\]"):
        resume(copy, jax.eval_shape(lambda: init_state(tiny("model.d_model=48").model, tiny().train)))
    assert checkpoint_steps(copy) == [10, 20, 30, 40] and not (copy / CORRUPT).exists()


def test_run_directory_of_another_config_is_refused_unless_overwrite(copy, tmp_path):
    with pytest.raises(RunDirConflict, match=r"differing keys: model\.num_heads: 2 -> 4; train\.seed: 0 -> 1\. "
                                             r"Use another --out, or pass train\.overwrite=true"):
        run(tiny("train.seed=1", "model.num_heads=4"), copy)
    assert checkpoint_steps(copy) == [10, 20, 30, 40] and len(read_metrics(copy)) == 40
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(RunDirConflict, match=r"notes is not empty and has no config\.json"):
        run(tiny(), tmp_path / "notes")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirConflict, match=r"file: is a file"):
        run(tiny(), tmp_path / "file")
    (copy / "config.json").write_text("[1, 2]")
    with pytest.raises(RunDirConflict, match=r"config\.json: a JSON list, expected a run config"):
        run(tiny(), copy)


def test_overwrite_deletes_the_old_runs_outputs(copy):
    (copy / "probes").mkdir()
    (copy / "probes" / "step_00000040.npz").write_bytes(b"old")
    (copy / CORRUPT / "50").mkdir(parents=True)
    open_run_dir(copy, tiny("train.overwrite=true", "model.num_heads=4"))
    assert sorted(p.name for p in copy.iterdir()) == ["config.json", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((copy / "config.json").read_text())["model"]["num_heads"] == 4

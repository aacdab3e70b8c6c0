"""Short training runs: every positional scheme learns, resumes are exact, NaN stops, run dirs load."""
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer

from minimal_lm.run_dir import checkpoint_steps, is_run_dir, load_run
from train import NonFiniteLoss, read_metrics, run
from train.__main__ import main
from train.checkpoint import RunDirConflict
from train.prepare import prepare
from train.synthetic import unigram_entropy
from train_testlib import CONFIGS, TINY, same_params, tiny


@pytest.fixture(scope="module")
def rope_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rope"
    run(tiny(), out)
    return out


@pytest.mark.parametrize("position,dtype", [("none", "float32"), ("learned", "bfloat16"), ("alibi", "float32")])
def test_scheme_loss_falls_below_unigram_entropy(tmp_path, position, dtype):
    cfg = tiny(f"model.position={position}", f"model.dtype={dtype}")
    result = run(cfg, tmp_path, hooks=(lambda step, params: {"hook_step": step},))
    check_learned(tmp_path, result, cfg)
    _, params, _ = load_run(tmp_path)
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype("float32")}


def test_rope_loss_falls_below_unigram_entropy(rope_run):
    check_learned(rope_run, read_metrics(rope_run)[-1], tiny())


def check_learned(out, result, cfg):
    lines = read_metrics(out)
    assert [m["step"] for m in lines] == list(range(1, 41))
    entropy = unigram_entropy(cfg.data, cfg.train.seq_len + 1)
    assert lines[0]["loss"] > 5.0  # about ln(264) at init
    assert result["eval_loss"] < entropy - 0.3, (result, entropy)
    evals = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evals] == [20, 40] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert all(m.get("hook_step", m["step"]) == m["step"] for m in evals)
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(lines[-1])


def test_interrupted_run_resumes_exactly(rope_run, tmp_path):
    run(tiny("train.stop_after=15"), tmp_path)
    assert checkpoint_steps(tmp_path)[-1] == 15 and read_metrics(tmp_path)[-1]["step"] == 15
    run(tiny(), tmp_path)
    assert same_params(load_run(rope_run)[1], load_run(tmp_path)[1])
    keys = ("step", "loss", "lr", "grad_norm")
    values = [[[m[k] for k in keys] for m in read_metrics(d)] for d in (tmp_path, rope_run)]
    assert values[0] == values[1]


def test_resume_after_crash_drops_later_metrics_and_replays(rope_run, tmp_path):
    shutil.copytree(rope_run, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "40")
    shutil.rmtree(tmp_path / "checkpoints" / "30")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 41, "lo')  # killed while writing
    run(tiny(), tmp_path)
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 41))
    assert same_params(load_run(rope_run)[1], load_run(tmp_path)[1])


def test_other_config_refused_unless_overwrite(rope_run, tmp_path):
    shutil.copytree(rope_run, tmp_path, dirs_exist_ok=True)
    with pytest.raises(RunDirConflict, match=r"model\.position: 'rope' -> 'alibi'; train\.lr: 0\.01 -> 0\.02"):
        run(tiny("train.lr=0.02", "model.position=alibi"), tmp_path)
    (tmp_path / "checkpoints" / "40").rename(tmp_path / "checkpoints" / "41")  # overwrite must not keep it
    run(tiny("train.overwrite=true"), tmp_path)
    assert checkpoint_steps(tmp_path) == [10, 20, 30, 40]
    assert same_params(load_run(rope_run)[1], load_run(tmp_path)[1])


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    cfg = tiny("train.lr=1e30", "train.warmup_steps=0", "train.checkpoint_every=1")
    with pytest.raises(NonFiniteLoss) as e:
        run(cfg, tmp_path)
    bad, good = map(int, re.search(r"at step (\d+).*last good checkpoint: step (\d+)", str(e.value)).groups())
    assert good == bad - 1 == checkpoint_steps(tmp_path)[-1]
    assert all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path)) and read_metrics(tmp_path)[-1]["step"] == good


def test_cli_trains_and_saves_resolved_config(rope_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["--config", str(CONFIGS / "tiny_rope.py"), "--out", str(out), *TINY, "train.stop_after=10"]) == 0
    assert json.loads((out / "config.json").read_text()) == tiny("train.stop_after=10").to_dict()
    assert "step 10" in capsys.readouterr().out
    assert main(["--config", str(CONFIGS / "tiny_rope.py"), "--out", str(out), *TINY]) == 0
    assert same_params(load_run(rope_run)[1], load_run(out)[1])
    with pytest.raises(SystemExit) as e:
        main(["--config", str(CONFIGS / "tiny_rope.py"), "--out", str(out), *TINY, "model.num_layers=2"])
    assert e.value.code == 2 and "model.num_layers: 1 -> 2" in capsys.readouterr().err


def test_trains_on_prepared_shards(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(400)))
    prepare([text], tmp_path / "data", vocab_size=264, val_fraction=0.2)
    cfg = tiny("data.kind=shards", f"data.path={tmp_path / 'data'}", "train.stop_after=10")
    result = run(cfg, tmp_path / "run")
    assert result["eval_loss"] < read_metrics(tmp_path / "run")[0]["loss"] - 1.0
    assert (tmp_path / "run" / "tokenizer.json").read_text() == (tmp_path / "data" / "tokenizer.json").read_text()


def test_load_run(rope_run, tmp_path):
    assert is_run_dir(rope_run) and not is_run_dir(tmp_path)
    cfg, params, tok = load_run(rope_run, dtype=jnp.bfloat16, step=20)
    assert cfg == tiny().model.replace(dtype="bfloat16", param_dtype="bfloat16")
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype("bfloat16")}
    assert Tokenizer.from_file(tok).encode("hi").ids == [256, ord("h"), ord("i")]
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7; available: \[10, 20, 30, 40\]"):
        load_run(rope_run, step=7)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)


def test_load_run_corrupt_checkpoint(rope_run, tmp_path):
    shutil.copytree(rope_run, tmp_path, dirs_exist_ok=True)
    for f in (tmp_path / "checkpoints" / "40" / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(b"\0" * f.stat().st_size)
    with pytest.raises(ValueError, match=r"checkpoints/40: cannot restore params"):
        load_run(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model"]["d_model"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"checkpoints/30: cannot restore params"):
        load_run(tmp_path, step=30)


def test_demo_trains_rope_and_nope_and_reports(tmp_path, capsys):
    from train.demo import main as demo

    assert demo(["--out", str(tmp_path), *TINY, "train.stop_after=5"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny_rope", "tiny_nope"):
        assert is_run_dir(tmp_path / name) and str(tmp_path / name) in out
        assert re.search(rf"{name}\s+5\s+\d+\.\d+\s+{unigram_entropy(tiny().data, 49):.3f}", out)

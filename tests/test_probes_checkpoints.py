"""`python -m probes checkpoints` end to end on three tiny random Llama checkpoints saved at "steps" 0, 100 and
200 (one column of W_q and W_k in layer 1 scaled up more at each step), offline; a fourth comes through a
stand-in for huggingface_hub.snapshot_download as ID@REVISION."""
import json
import shutil

import huggingface_hub
import matplotlib.image
import numpy as np
import pytest
import torch

from hf_testlib import random_params, save, tiny_hf, tiny_tokenizer
from minimal_lm import from_pretrained
from probes import emergence
from probes.__main__ import main
from probes.checkpoints import parse_checkpoint, parse_checkpoints, probe_checkpoints
from probes.massive import PROBE_SITES, norm_matrices
from probes.prompts import DEFAULT_PROMPTS, encode, left_padded_batches, num_batches
from probes.records import read_records

H, K, E, DIM = 4, 2, 16, 7
SCALE = {0: 1.0, 100: 4.0, 200: 25.0, 300: 30.0}


def _checkpoint(path, step):
    model = tiny_hf("llama", seed=step, vocab_size=320)
    with torch.no_grad():
        attn = model.model.layers[1].self_attn
        for proj, heads in ((attn.q_proj, H), (attn.k_proj, K)):
            proj.weight[[h * E + DIM for h in range(heads)]] *= SCALE[step]
    return tiny_tokenizer(save(model, path), vocab_size=300)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_run")
    return {step: _checkpoint(root / f"step{step}", step) for step in SCALE}


@pytest.fixture(scope="module")
def probed(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("series") / "out"
    main(["checkpoints", "--out", str(out), "--batch-size", "2", "--heatmap-steps", "90", "--heatmap-layers", "1",
          ckpts[200], ckpts[0], ckpts[100]])  # one Figure-2 view (at the probed step nearest 90), to save time
    return out


def test_records_per_step_report_and_figures(probed):
    records = read_records(probed)
    assert [r.step for r in records] == [0, 100, 200]
    summary = emergence.summarize(records)
    assert summary["steps"] == [0, 100, 200] and summary["has_step0"]
    layer1 = summary["sites"]["q"][1]
    assert not layer1["massive_at_init"] and layer1["first_massive_step"] in (100, 200)
    assert layer1["final"] > 3 * layer1["init"]
    assert summary["sites"]["v"][1]["first_massive_step"] is None
    html = (probed / "index.html").read_text()
    assert "step-0 checkpoint" not in html and "largest max ratio over layers, step 0 → 200" in html
    pngs = ["sinks_schemes.png", "tiny_run0_emergence.png", "tiny_run0_heatmap_step100.png"]
    assert sorted(p.name for p in (probed / "figures").glob("*.png")) == pngs
    assert [len(r.sinks["mean_mass"]) for r in records] == [2, 2, 2] and "Attention sinks (share of heads" in html
    for name in pngs:
        assert f'src="figures/{name}"' in html
        img = matplotlib.image.imread(probed / "figures" / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0
    state = json.loads((probed / "checkpoints.json").read_text())
    assert sorted(state["checkpoints"], key=int) == ["0", "100", "200"] and state["name"] == "tiny_run0"


def test_record_numbers_equal_norm_matrices_on_each_checkpoint(probed, ckpts):
    for r in read_records(probed):
        cfg, params, tok = from_pretrained(ckpts[r.step])
        tokens = encode(list(DEFAULT_PROMPTS), tok, vocab_size=cfg.vocab_size)
        want, _ = norm_matrices(params, cfg, left_padded_batches(tokens, 2, tok.pad_token_id), PROBE_SITES,
                                total=num_batches(len(tokens), 2), progress=False)
        assert sorted(r.norms) == sorted(PROBE_SITES)
        for site in PROBE_SITES:
            np.testing.assert_array_equal(r.norms[site], want[site], err_msg=f"step {r.step} {site}")


def test_rerun_skips_recorded_steps_and_adds_a_hub_revision(probed, ckpts, monkeypatch, capsys):
    mtimes = {p.name: p.stat().st_mtime_ns for p in (probed / "probes").glob("*.npz")}
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision))
        return ckpts[int(revision.removeprefix("step"))]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    main(["checkpoints", "--out", str(probed), "--batch-size", "2", "--heatmap-steps", "90", "--heatmap-layers", "1",
          ckpts[0], ckpts[100], ckpts[200], "minimal-lm-tests/tiny@step300"])
    out = capsys.readouterr().out
    assert out.count("recorded, skipped") == 3 and "step 300: minimal-lm-tests/tiny@step300: loaded" in out
    assert calls == [("minimal-lm-tests/tiny", "step300")]
    assert {p.name: p.stat().st_mtime_ns for p in (probed / "probes").glob("*.npz") if p.name in mtimes} == mtimes
    assert [r.step for r in read_records(probed)] == [0, 100, 200, 300]
    assert "step 0 → 300" in (probed / "index.html").read_text()


def test_other_settings_or_another_source_for_a_step_are_refused(probed, ckpts, capsys):
    with pytest.raises(SystemExit):
        main(["checkpoints", "--out", str(probed), "--lambda", "3", ckpts[0]])
    assert "other settings (lam: 5.0 -> 3.0)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["checkpoints", "--out", str(probed), f"0={ckpts[100]}"])
    assert "step 0 is recorded" in capsys.readouterr().err


def test_without_step0_the_report_warns(probed, ckpts, tmp_path, capsys):
    """`python -m probes report` on a checkpoints directory whose step-0 record is gone."""
    late = shutil.copytree(probed, tmp_path / "late")
    (late / "probes" / "step_00000000.npz").unlink()
    with pytest.warns(UserWarning, match="no step-0 checkpoint"):
        probe_checkpoints([ckpts[100]], late, batch_size=2, report=False)
    main(["report", str(late)])
    assert f"wrote {late / 'index.html'}" in capsys.readouterr().out
    html = (late / "index.html").read_text()
    assert "Warning: no step-0 checkpoint" in html and "no step-0 record, so no baseline" in html


def test_checkpoint_specs(ckpts, tmp_path):
    assert parse_checkpoint("EleutherAI/pythia-160m@step1000")[0].step == 1000
    c = parse_checkpoint("143000=EleutherAI/pythia-160m")[0]
    assert (c.step, c.path, c.revision, c.source) == (143000, "EleutherAI/pythia-160m", None,
                                                      "EleutherAI/pythia-160m@main")
    assert parse_checkpoint(f"5={ckpts[100]}")[0].step == 5
    for name, step in (("checkpoint-300", 300), ("global_step_12", 12), ("Step7", 7)):
        (tmp_path / name).mkdir()
        assert parse_checkpoint(str(tmp_path / name))[0].step == step
    (tmp_path / "final").mkdir()
    with pytest.raises(ValueError, match="cannot tell its training step.*STEP="):
        parse_checkpoint(str(tmp_path / "final"))
    with pytest.raises(ValueError, match="cannot tell its training step"):
        parse_checkpoint("EleutherAI/pythia-160m@main")
    with pytest.raises(ValueError, match="step 100 is given twice"):
        parse_checkpoints([ckpts[100], f"100={ckpts[200]}"])
    with pytest.raises(ValueError, match="not a hub id"):
        parse_checkpoint(str(tmp_path / "missing"))


def _run_dir(path, cfg, steps):
    """A run directory as the training side leaves it (config.json, tokenizer.json, orbax checkpoints of
    random params), written without training."""
    import orbax.checkpoint as ocp

    from minimal_lm import Tokenizer
    from minimal_lm.run_dir import PARAMS
    from train.checkpoint import checkpoint_manager

    path.mkdir()
    Tokenizer.from_dir(tiny_tokenizer(path.parent / "tok")).backend.save(str(path / "tokenizer.json"))
    (path / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "train": {}, "data": {}}))
    with checkpoint_manager(path, read_only=False) as mngr:
        for step in steps:
            mngr.save(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(random_params(cfg, seed=step))}))
        mngr.wait_until_finished()
    return path


def test_a_run_directory_gives_each_saved_checkpoint(tmp_path):
    from minimal_lm import ModelConfig
    from minimal_lm.run_dir import load_run

    cfg = ModelConfig(vocab_size=320, d_model=32, num_layers=1, num_heads=2, max_seq_len=64)
    run_dir = _run_dir(tmp_path / "rope", cfg, [0, 10])
    assert [c.step for c in parse_checkpoint(str(run_dir))] == [0, 10]
    assert [(c.step, c.run_step) for c in parse_checkpoint(f"10={run_dir}")] == [(10, 10)]
    with pytest.raises(ValueError, match=r"no checkpoint at step 7; saved: \[0, 10\]"):
        parse_checkpoint(f"7={run_dir}")
    out = tmp_path / "series"
    index = probe_checkpoints([str(run_dir)], out, batch_size=4, progress=False, report=False)
    assert [r.step for r in read_records(out)] == [0, 10] and index == out / "index.html"
    assert json.loads((out / "checkpoints.json").read_text())["name"] == "rope"
    tokens = json.loads((out / "prompts.json").read_text())["tokens"]
    assert max(len(t) for t in tokens) == cfg.max_seq_len  # the built-in prompts, cut to the model's length
    for r in read_records(out):
        _, params, _ = load_run(run_dir, step=r.step)
        want, _ = norm_matrices(params, cfg, left_padded_batches(tokens, 4), PROBE_SITES, progress=False)
        np.testing.assert_array_equal(r.norms["k"], want["k"])

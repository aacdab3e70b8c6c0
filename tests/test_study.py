"""The study end to end on micro models: every file, step-0 records from the initial params, resume after
a crash without duplicates, a planted massive dim dated to its step, reruns that skip finished work, the
report without a scheme; study configs."""
import contextlib
import dataclasses
import io
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from minimal_lm import ConfigError, count_params
from minimal_lm.files import read_log
from minimal_lm.run_dir import load_run
from probes import emergence as em
from probes.__main__ import main
from probes.emergence import read_disruption_log
from probes.records import TrainingProbe, read_records, record_dir
from probes.study import load_study, run_study
from train.step import init_state

CONFIGS = Path(__file__).parents[1] / "configs"
MICRO = ["model.d_model=32", "model.num_heads=2", "train.seq_len=32", "train.batch_size=4", "train.steps=8",
         "train.warmup_steps=2", "train.progress=false", "study.probe_every=2", "study.disrupt_every=4",
         "study.disrupt_n=2", "study.disrupt_max_new_tokens=3", "study.probe_rows=4", "study.heatmap_steps=8",
         "study.disrupt_modes=none,massive"]
SCHEMES = ("rope", "none")
EDIT_AT, LAYER, DIM = 4, 1, 3  # the planted edit: W_k of this layer, head 0, this dim, x50 in checkpoint EDIT_AT


def micro(*extra, schemes=SCHEMES):
    return load_study(CONFIGS / "study_default.py", MICRO + [f"study.schemes={','.join(schemes)}", *extra])


def _plant(run_dir, cfg):
    from train import checkpoint
    from train.step import TrainState

    mngr = checkpoint.manager(run_dir, cfg)
    state = checkpoint.restore(mngr, EDIT_AT, init_state(cfg.model, cfg.train))
    layers = state.params["layers"]
    params = {**state.params, "layers": {**layers, "wk": layers["wk"].at[LAYER, :, 0, DIM].multiply(50.0)}}
    mngr.delete(EDIT_AT)
    checkpoint.save(mngr, EDIT_AT, TrainState(params, state.opt_state))
    mngr.wait_until_finished()
    mngr.close()


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """RoPE trained to step EDIT_AT and killed there (leaving stale files past its last checkpoint), its
    checkpoint edited (a planted massive dim), then the whole study run through the command line."""
    out = tmp_path_factory.mktemp("study")
    first = micro(f"train.stop_after={EDIT_AT}", schemes=("rope",))
    run_study(first, out, progress=False, report=False)
    rope = out / "rope"
    _plant(rope, first.scheme_config("rope"))
    shutil.copy(record_dir(rope) / "step_00000004.npz", record_dir(rope) / "step_00000006.npz")
    with open(rope / "disruption.jsonl", "a") as f:
        f.write(json.dumps({"step": 8, "accuracy": {"none": {"contextual": 1.0}}, "n": {"contextual": 2}}) + "\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["study", "--config", str(CONFIGS / "study_default.py"), "--out", str(out), *MICRO,
                     f"study.schemes={','.join(SCHEMES)}"]) == 0
    assert f"wrote {out / 'index.html'}" in printed.getvalue()
    return out


def test_study_writes_every_file(study_dir):
    for name in ("study.json", "probe_batch.npz", "items.jsonl", "index.html", "figures/loss.png",
                 "figures/emergence_schemes.png", "figures/disruption_over_training.png"):
        assert (study_dir / name).is_file(), name
    html = (study_dir / "index.html").read_text()
    for scheme in SCHEMES:
        run = study_dir / scheme
        assert (study_dir / "figures" / f"{scheme}_emergence.png").is_file()
        assert (study_dir / "figures" / f"{scheme}_heatmap_step8.png").is_file()
        final = run / "disruption" / "step_00000008"
        assert all((final / f).is_file() for f in ("results.json", "examples.jsonl", "index.html", "accuracy.png"))
        assert [r.step for r in read_records(run)] == [0, 2, 4, 6, 8]
        assert [x["step"] for x in read_disruption_log(run)] == [0, 4, 8]
        assert [m["step"] for m in read_log(run / "metrics.jsonl")] == list(range(1, 9))
        assert set(json.loads((final / "results.json").read_text())["results"]) == {"none", "massive"}
    for text in ("RoPE: emergence", "NoPE: emergence", "Last eval loss: RoPE", "What it cannot show",
                 "low-frequency share", "Disruption accuracy"):
        assert text in html, text
    assert "Missing" not in html


def test_resume_replaced_the_stale_files_of_the_killed_run(study_dir):
    rope = study_dir / "rope"
    rec6 = {r.step: r for r in read_records(rope)}[6]
    assert rec6.tokens_seen == 6 * 4 * 32
    assert read_disruption_log(rope)[-1]["n"] == {"contextual": 2, "parametric": 2}
    assert len(read_log(rope / "disruption.jsonl")) == 3, "the stale line was dropped, not shadowed"
    assert (rope / "disruption" / "step_00000004" / "index.html").is_file(), "the interrupted run's experiment"


def test_planted_dim_is_dated_to_the_first_record_after_the_edit(study_dir):
    summary = em.summarize(read_records(study_dir / "rope"), lam=5.0)
    k_pre = summary["sites"]["k_pre"]
    assert k_pre[LAYER]["first_massive_step"] == EDIT_AT + 2 and k_pre[LAYER]["largest_rise_step"] == EDIT_AT + 2
    assert not k_pre[LAYER]["massive_at_init"] and k_pre[LAYER]["init"] < 5.0 < k_pre[LAYER]["final"]
    assert k_pre[LAYER]["massive_count_init"] == 0 and k_pre[LAYER]["massive_count_final"] >= 1
    assert k_pre[0]["first_massive_step"] is None, "the other layer is untouched"
    assert summary["sites"]["q_pre"][LAYER]["first_massive_step"] is None
    assert summary["sites"]["v"][LAYER]["first_massive_step"] is None
    assert read_records(study_dir / "rope")[-1].summary["k_pre"]["top1_dims"][LAYER][0] == DIM
    none = em.summarize(read_records(study_dir / "none"), lam=5.0)
    assert all(x["first_massive_step"] is None for site in none["sites"].values() for x in site)
    html = (study_dir / "index.html").read_text()
    assert "A massive dim absent at step 0 appeared in: RoPE (K)." in html
    assert "No Q/K dim crossed λ = 5 (beyond step 0) in: NoPE." in html


def test_step0_records_come_from_the_initial_params_and_schemes_share_them(study_dir):
    batch = np.load(study_dir / "probe_batch.npz")
    r0 = {s: read_records(study_dir / s)[0] for s in SCHEMES}
    cfg, params, _ = load_run(study_dir / "rope", step=0)  # the state training started from
    want = TrainingProbe(cfg, batch["tokens"], batch["mask"]).measure(params, 0, 0)
    for site in want.norms:
        np.testing.assert_allclose(r0["rope"].norms[site], want.norms[site], rtol=1e-5)
    for site in ("q_pre", "k_pre", "v"):  # layer 0 sees the same embeddings and weights in both schemes
        np.testing.assert_allclose(r0["rope"].norms[site][0], r0["none"].norms[site][0], rtol=1e-5)
    assert not np.allclose(r0["rope"].norms["q"][0], r0["none"].norms["q"][0])


def test_rerun_skips_finished_work(study_dir):
    before = {p: p.stat().st_mtime_ns for p in study_dir.rglob("*") if p.is_file()}
    run_study(micro(), study_dir, progress=False, report=False)
    changed = sorted(str(p.relative_to(study_dir)) for p, t in before.items() if p.stat().st_mtime_ns != t)
    assert changed == ["none/timing.json", "rope/timing.json", "study.json"]


def test_a_damaged_last_checkpoint_is_set_aside_and_retrained(study_dir, tmp_path):
    """A finished scheme whose final checkpoint was truncated: the rerun warns, moves it to
    corrupt_checkpoints/, retrains from the previous one to the same params and redoes the measurements."""
    from train.checkpoint import CORRUPT, CheckpointWarning

    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy)
    rope = copy / "rope"
    last = max(int(p.name) for p in (rope / "checkpoints").iterdir() if p.name.isdigit())
    want = load_run(rope, step=last)[1]
    f = max((f for f in (rope / "checkpoints" / str(last) / "params").rglob("*") if f.is_file()),
            key=lambda f: f.stat().st_size)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.warns(CheckpointWarning, match=f"checkpoints/{last} is damaged"):
        run_study(micro(), copy, progress=False, report=False)
    assert (rope / CORRUPT / str(last)).is_dir()
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(load_run(rope, step=last)[1]),
                                                     jax.tree.leaves(want)))
    steps = [x["step"] for x in read_log(rope / "disruption.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == last
    assert (rope / "disruption" / f"step_{last:08d}" / "index.html").is_file()
    assert (record_dir(rope) / f"step_{last:08d}.npz").is_file()


def test_report_survives_a_missing_scheme_and_needs_no_checkpoints(study_dir, tmp_path, capsys):
    """`report` reads saved records and results only; a study without one of its schemes says so."""
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.rmtree(copy / "none")
    assert main(["report", str(copy)]) == 0
    html = (copy / "index.html").read_text()
    assert "Missing: none" in html and "RoPE: emergence" in html and "NoPE: emergence" not in html
    assert main(["report", str(copy / "rope")]) == 0
    assert (copy / "rope" / "report" / "index.html").is_file()
    assert "report/index.html" in capsys.readouterr().out


def test_report_of_a_directory_without_runs_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path)])
    assert e.value.code == 2 and "neither a study directory" in capsys.readouterr().err


def test_shipped_study_configs_build():
    sizes = {}
    for spec in ("study_default.py", "study_gpu.py", "study_gpu.py:SYNTHETIC"):
        study = load_study(CONFIGS / spec if ":" not in spec else f"{CONFIGS}/{spec}")
        assert study.schemes == ("rope", "none", "alibi", "learned")
        sizes[spec] = count_params(jax.eval_shape(lambda: init_state(study.base.model, study.base.train)).params)
    assert sizes["study_default.py"] < 1e6 and all(20e6 < sizes[s] < 60e6 for s in ("study_gpu.py",
                                                                                     "study_gpu.py:SYNTHETIC"))
    assert load_study(f"{CONFIGS}/study_gpu.py").base.data.kind == "shards"


@pytest.mark.parametrize("override,message", [
    ("study.schemes=rope,rotary", "study.schemes='rope,rotary': expected distinct names from"),
    ("study.disrupt_every=5", "study.disrupt_every=5: expected a multiple of study.probe_every=10"),
    ("study.probe_source=corpus", "study.probe_source='corpus': expected one of items, heldout"),
    ("study.disrupt_modes=none,int4", "study.disrupt_modes: ['int4'] not allowed"),
    ("study.top_k=64", "study.top_k=64: expected at most head_dim=32"),
    ("study.lam=0", "study.lam=0.0: expected a positive number"),
    ("study.probes=3", "unknown key 'study.probes'; valid keys under study: study.schemes"),
    ("study.base.train.steps=3", "unknown key 'study.base.train.steps'; valid keys under study: study.schemes"),
    ("train.stepz=3", "unknown key 'train.stepz'"),
])
def test_bad_study_settings_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_study(CONFIGS / "study_default.py", [override])
    assert message in str(e.value)


def test_synthetic_items_need_the_synthetic_corpus():
    study = load_study(CONFIGS / "study_default.py")
    shards = dataclasses.replace(study.base, data=dataclasses.replace(study.base.data, kind="shards", path="x"))
    with pytest.raises(ConfigError, match="study.probe_source='items' needs data.kind='synthetic'"):
        dataclasses.replace(study, base=shards)


def test_another_study_in_the_same_directory_is_refused(study_dir, tmp_path):
    shutil.copy(study_dir / "study.json", tmp_path / "study.json")
    with pytest.raises(ConfigError, match=r"differing keys: study.probe_every: 2 -> 4"):
        run_study(micro("study.probe_every=4"), tmp_path, progress=False)


@pytest.mark.slow
def test_text_corpus_study_with_the_paper_tasks(tmp_path):
    """study_gpu.py's path at micro size: token shards, held-out corpus rows as the probe batch, the
    paper's passkey (contextual) and Yes/No facts (parametric) as the disruption tasks."""
    from probes.tasks import PASSKEY_FILLER, PASSKEY_INSTRUCTION
    from train.config import DataConfig
    from train.prepare import prepare
    from train.synthetic import batch, decode

    docs = [decode(row) for step in range(8) for row in batch(DataConfig(), "train", step, 8, 400)]
    (tmp_path / "corpus.txt").write_text("\n".join(docs + [PASSKEY_INSTRUCTION, PASSKEY_FILLER] * 40) + "\n")
    prepare([tmp_path / "corpus.txt"], tmp_path / "data", vocab_size=512, val_fraction=0.1)
    study = load_study(f"{CONFIGS}/study_gpu.py", [
        f"data.path={tmp_path / 'data'}", "model.d_model=32", "model.num_layers=2", "model.num_heads=2",
        "model.vocab_size=512", "model.max_seq_len=256", "model.dtype=float32", "train.seq_len=64",
        "train.batch_size=4", "train.steps=4", "train.warmup_steps=1", "train.eval_batches=1", "train.progress=false",
        "study.schemes=rope", "study.probe_every=2", "study.disrupt_every=0", "study.probe_len=64",
        "study.disrupt_n=2", "study.disrupt_batch_size=4", "study.heatmap_steps=4"])
    index = run_study(study, tmp_path / "study", progress=False)
    run = tmp_path / "study" / "rope"
    assert [r.step for r in read_records(run)] == [0, 2, 4]
    assert np.load(tmp_path / "study" / "probe_batch.npz")["tokens"].shape == (16, 64)
    result = json.loads((run / "disruption" / "step_00000004" / "results.json").read_text())
    assert [(r["task"], r["kinds"], r["n"]) for r in result["runs"]] == [("passkey", ["contextual"], 2),
                                                                       ("facts", ["parametric"], 2)]
    assert "Disruption accuracy" in index.read_text()

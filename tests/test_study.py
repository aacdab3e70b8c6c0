"""The study end to end on micro models: every file, step-0 records from the initial params, resume after
a crash without duplicates, a planted massive dim dated to its step, reruns that skip finished work, the
report without a scheme; on a tiny stdlib corpus the token-class log (truncated on resume), seeds in their own
run directories and the report's seed spread; study configs, the GPU one end to end at a tiny size."""
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


SYNTHETIC = f"{CONFIGS}/study_default.py:SYNTHETIC"


def micro(*extra, schemes=SCHEMES):
    return load_study(SYNTHETIC, MICRO + [f"study.schemes={','.join(schemes)}", *extra])


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
        assert main(["study", "--config", SYNTHETIC, "--out", str(out), *MICRO,
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


SEED0_ONLY = ("Massive values (a dim with M > 5 x its head mean): RoPE", "RoPE: largest max ratio over layers, step 0",
              "NoPE: largest max ratio over layers, step 0", "A massive dim absent at step 0 appeared in: RoPE (K).",
              "No Q/K dim crossed λ = 5 (beyond step 0) in: NoPE.", "RoPE low-frequency share of top-1 mass",
              "NoPE low-frequency share of top-1 mass", "Attention sinks (share of heads",
              "Heads agreeing on the frequency index of their top dim, largest at the end: ")


def test_summary_states_each_quantity_once_with_several_seeds(study_dir, tmp_path):
    """With two seeds the summary keeps the pooled statements and drops seed 0's duplicates of them, keeping what
    only seed 0's said (the layer that crossed λ, Q/K against V, Gu et al., the heads' agreement, the caveat for a
    model without rotation); with one seed it is emergence_paragraphs then site_paragraphs, as before seeds."""
    from probes import report, statements

    settings, st, seed_data = report.study_data(study_dir)
    data = {n: ds[0] for n, ds in seed_data.items()}
    one = report.summary_paragraphs(data, settings, st, seed_data)
    present = {n: d for n, d in data.items() if d}
    before = report.emergence_paragraphs(present, st) + statements.site_paragraphs(seed_data, st["lam"])
    assert one[1:1 + len(before)] == before
    text = " ".join(one)
    for seed0 in SEED0_ONLY:
        assert seed0 in text, seed0
    assert f"crossing λ in layer(s) [{LAYER}]" in text and "RoPE (1 seed, " in text
    assert "grew more than that of V" in text or "In no scheme did the largest max ratio of Q or K" in text
    assert "per seed:" not in text and "per scheme over its seeds" not in text

    copy = tmp_path / "study"  # two seeds: seed 1 a copy of seed 0 (the report reads saved records only)
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("checkpoints"))
    for scheme in SCHEMES:
        shutil.copytree(copy / scheme, copy / f"{scheme}_seed1")
    study = json.loads((copy / "study.json").read_text())
    study["study"]["seeds"] = [0, 1]
    (copy / "study.json").write_text(json.dumps(study))
    assert main(["report", str(copy)]) == 0
    settings, st, seed_data = report.study_data(copy)
    assert [len(ds) for ds in seed_data.values()] == [2, 2]
    two = " ".join(report.summary_paragraphs({n: ds[0] for n, ds in seed_data.items()}, settings, st, seed_data))
    for seed0 in SEED0_ONLY + ("grew more than that of V", "In no scheme did", "crossing λ in layer(s)"):
        assert seed0 not in two, seed0
    for pooled in ("Massive values (a dim with M > 5 x its head mean), per scheme over its seeds",
                   "RoPE (2 seeds, 1,024 tokens seen): largest max ratio over layers, step 0 → end: q ",
                   "NoPE (2 seeds, 1,024 tokens seen)", "Low-frequency share, step 0 → end: q ",
                   "RoPE / NoPE ratio of the largest max ratio", "Differences between schemes",
                   "The largest max ratio of Q or K grew (end over step 0) more than that of V in: RoPE ",
                   "Attention sinks: the attention-sink share above is the share of heads with first-token",
                   "Gu et al. find 18-33%", "The after-rotation value at step 0 is the bias of the rotation",
                   "Heads agreeing on the frequency index of their top dim, largest at the end, per seed: ",
                   "NoPE: the low-frequency share above is that of the top-1 mass (mean over layers; chance",
                   "hypothetical: this model does not rotate (position=none)"):
        assert pooled in two, pooled
    step = EDIT_AT + 2  # seed 0's "crossing λ in layer(s) [1]", per seed
    assert f"k_pre at step {step} (layer {LAYER}); {step} (layer {LAYER})" in two
    for once, n in (("largest max ratio over layers, step 0 → ", 2), ("Low-frequency share, step 0 → end", 2),
                    ("first-token attention mass", 1), ("(index 0 is", 0), ("Index 0 is the fastest-rotating", 1)):
        assert two.count(once) == n, once  # once per scheme, or once
    html = (copy / "index.html").read_text()
    assert "RoPE (2 seeds, 1,024 tokens seen)" in html and "NoPE low-frequency share of top-1 mass" not in html


def test_shipped_study_configs_build():
    sizes = {}
    for spec in ("study_default.py", "study_default.py:SYNTHETIC", "study_cpu_long.py", "study_gpu.py",
                 "study_gpu.py:SYNTHETIC"):
        study = load_study(CONFIGS / spec if ":" not in spec else f"{CONFIGS}/{spec}")
        assert study.schemes == ("rope", "none", "alibi", "learned")
        sizes[spec] = count_params(jax.eval_shape(lambda: init_state(study.base.model, study.base.train)).params)
    assert load_study(CONFIGS / "study_cpu_long.py").seeds == (0, 1, 2)
    assert sizes["study_default.py"] < 1e6 and sizes["study_cpu_long.py"] == sizes["study_default.py"]
    assert all(20e6 < sizes[s] < 60e6 for s in ("study_gpu.py", "study_gpu.py:SYNTHETIC"))
    assert load_study(f"{CONFIGS}/study_gpu.py").base.data.kind == "stdlib"
    assert load_study(CONFIGS / "study_default.py").base.data.kind == "stdlib"
    assert load_study(SYNTHETIC).base.data.kind == "synthetic"
    mine = load_study(f"{CONFIGS}/study_gpu.py", ["data.kind=shards", "data.path=data/text"])
    assert mine.base.data.path == "data/text" and mine.token_classes


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
    study = load_study(SYNTHETIC)
    shards = dataclasses.replace(study.base, data=dataclasses.replace(study.base.data, kind="shards", path="x"))
    with pytest.raises(ConfigError, match="study.probe_source='items' needs data.kind='synthetic'"):
        dataclasses.replace(study, base=shards)


def test_stdlib_refuses_the_synthetic_disruption_naming_the_keys():
    with pytest.raises(ConfigError) as e:
        load_study(CONFIGS / "study_default.py", ["study.disrupt_tasks=synthetic"])
    assert ("study.disrupt_tasks='synthetic' needs data.kind='synthetic'" in str(e.value)
            and "got data.kind='stdlib'" in str(e.value) and "set study.disrupt_tasks=none" in str(e.value))
    with pytest.raises(ConfigError, match="study.probe_source='items' needs .* set study.probe_source=heldout"):
        load_study(CONFIGS / "study_default.py", ["study.probe_source=items"])
    with pytest.raises(ConfigError, match="study.seeds='1,1': expected distinct integers >= 0"):
        load_study(CONFIGS / "study_default.py", ["study.seeds=1,1"])
    with pytest.raises(ConfigError, match="study.class_len=512 exceeds model.max_seq_len=256"):
        load_study(CONFIGS / "study_default.py", ["study.class_len=512"])


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
        "data.kind=shards", f"data.path={tmp_path / 'data'}", "study.disrupt_tasks=paper", "study.class_rows=4",
        "study.class_len=64", "model.d_model=32", "model.num_layers=2", "model.num_heads=2",
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


# ---- the stdlib corpus: token classes, seeds ---------------------------------------------------------


def stdlib_micro(cache, *extra):
    return load_study(CONFIGS / "study_default.py", [
        *(x for x in MICRO if not x.startswith("study.disrupt_n") and "max_new" not in x), "study.schemes=rope",
        "study.probe_len=32", "study.class_rows=4", "study.class_len=48", "study.seeds=0,1", "data.max_files=8",
        "data.vocab_size=512", "model.vocab_size=512", f"data.cache_dir={cache}", *extra])


@pytest.fixture(scope="module")
def stdlib_study(tmp_path_factory):
    """Two seeds of RoPE on a tiny stdlib corpus; seed 0 first stopped at step 4 with a stale token-class line
    past it (as a kill leaves), then the whole study."""
    out, cache = tmp_path_factory.mktemp("stdlib_study"), tmp_path_factory.mktemp("cache")
    run_study(stdlib_micro(cache, "train.stop_after=4", "study.seeds=0"), out, progress=False, report=False)
    with open(out / "rope" / em.CLASS_LOG, "a") as f:
        f.write(json.dumps({"step": 6, "tokens_seen": 0, "classes": {}}) + "\n")
    run_study(stdlib_micro(cache), out, progress=False)
    return out


def test_token_class_log_at_the_disruption_cadence_and_resume_truncates_it(stdlib_study):
    for run in ("rope", "rope_seed1"):
        lines = read_log(stdlib_study / run / em.CLASS_LOG)
        assert [x["step"] for x in lines] == [0, 4, 8], run  # step 0, disrupt_every=4, the last step
        assert [x["tokens_seen"] for x in lines] == [0, 4 * 4 * 32, 8 * 4 * 32]
        final = lines[-1]["classes"]
        assert set(final) == {"none", "massive"}  # study.disrupt_modes of MICRO
        assert set(final["none"]) == {"contextual", "parametric", "other", "all"}
        assert final["none"]["all"]["n"] == 4 * 47 and final["none"]["contextual"]["n"] > 0
        assert sum(final["none"][c]["n"] for c in ("contextual", "parametric", "other")) == 4 * 47
        assert final["massive"]["all"]["loss"] != final["none"]["all"]["loss"]
    z = np.load(stdlib_study / "class_batch.npz")
    assert z["tokens"].shape == (4, 48) and int(z["eos_id"]) >= 0
    from probes.token_classes import BigramCounts

    counts = BigramCounts.load(stdlib_study / "bigram_counts.npz")
    assert counts.vocab_size == 512 and counts.counts.sum() > 1000


def test_seeds_train_in_their_own_run_directories_on_the_same_probe_batch(stdlib_study):
    from minimal_lm.run_dir import load_run

    a, b = load_run(stdlib_study / "rope", step=0), load_run(stdlib_study / "rope_seed1", step=0)
    assert (a[0].position, b[0].position) == ("rope", "rope")
    assert json.loads((stdlib_study / "rope" / "config.json").read_text())["train"]["seed"] == 0
    cfg1 = json.loads((stdlib_study / "rope_seed1" / "config.json").read_text())
    assert cfg1["train"]["seed"] == 1 and cfg1["data"]["seed"] == 1
    assert not np.allclose(jax.tree.leaves(a[1])[0], jax.tree.leaves(b[1])[0]), "another init"
    r0, r1 = read_records(stdlib_study / "rope")[0], read_records(stdlib_study / "rope_seed1")[0]
    assert [r.step for r in read_records(stdlib_study / "rope_seed1")] == [0, 2, 4, 6, 8]
    assert r0.norms["v"].shape == r1.norms["v"].shape and not np.allclose(r0.norms["v"], r1.norms["v"])


def test_report_shows_seeds_and_token_classes(stdlib_study):
    html = (stdlib_study / "index.html").read_text()
    for text in ("Seeds: 0, 1", "Per scheme and site", "RoPE (2 seeds, 1,024 tokens seen)", "first step &gt; λ=5",
                 "Contextual and parametric tokens under disruption", "Contextual / parametric held-out tokens",
                 "RoPE: contextual", "loss none", "top-1 % none"):
        assert text in html, text
    assert (stdlib_study / "figures" / "token_classes.png").is_file()
    assert (stdlib_study / "figures" / "rope_emergence.png").is_file()


def test_statements_call_a_scheme_difference_only_beyond_the_seed_spread():
    from probes import statements

    def run(q, k, v, first=None):
        layers = lambda r, f=None: [{"init": 1.5, "final": r, "peak": r, "first_massive_step": f,  # noqa: E731
                                     "lowfreq_init": 0.5, "lowfreq_final": 0.2}]
        sites = {"q": layers(q, first), "k": layers(k), "v": layers(v), "q_pre": layers(q, first), "k_pre": layers(k)}
        return {"summary": {"has_step0": True, "steps": [0, 10], "tokens_seen": [0, 100], "sites": sites,
                            "sinks": {"step0": True, "share_first": 0.0, "share_last": 0.25}},
                "freq": {"rotated": True}}

    data = {"rope": [run(6.0, 4.0, 2.0, first=10), run(7.0, 2.0, 2.1)],
            "none": [run(3.0, 3.0, 2.0), run(3.5, 3.5, 2.0)]}
    text = " ".join(statements.site_paragraphs(data, 5.0))
    assert "every seed of one is above every seed of the other (2+ seeds each): Q RoPE > NoPE." in text
    assert "Within the seed spread (not called): K NoPE > RoPE, V RoPE > NoPE." in text
    assert "Q 2.00 [2.00, 2.00], K 0.95 [0.57, 1.33] after rotation" in text  # 6/3, 7/3.5; 4/3, 2/3.5
    assert "A dim crossed λ = 5: q at step 10; none, q_pre at step 10; none (per seed)" in text
    assert "attention-sink share 0.00 [0.00, 0.00] → 0.25 [0.25, 0.25]" in text
    one = {n: ds[:1] for n, ds in data.items()}
    assert "there is no seed spread to compare the schemes' differences with, so none is called" in " ".join(
        statements.site_paragraphs(one, 5.0))
    table = statements.sites_table(data, 5.0)
    assert [r[:3] for r in table.rows[:2]] == [["RoPE", "q", 2], ["RoPE", "k", 2]]
    assert table.rows[0][7] == "10; none" and table.rows[1][7] == "none did"


def test_gpu_study_config_runs_end_to_end_at_a_tiny_size(tmp_path):
    """configs/study_gpu.py as shipped (stdlib corpus, bf16 compute, token classes, no item tasks) with only
    sizes overridden: only its speed on a GPU is unknown."""
    study = load_study(f"{CONFIGS}/study_gpu.py", [
        "model.d_model=32", "model.num_layers=2", "model.num_heads=2", "model.vocab_size=512", "model.max_seq_len=64",
        "data.vocab_size=512", "data.max_files=8", f"data.cache_dir={tmp_path / 'cache'}", "train.seq_len=32",
        "train.batch_size=2", "train.steps=4", "train.warmup_steps=1", "train.eval_batches=1", "train.log_every=1",
        "train.checkpoint_every=2", "train.progress=false", "study.schemes=rope,none", "study.probe_every=2",
        "study.disrupt_every=2", "study.probe_rows=2", "study.probe_len=32", "study.class_rows=2",
        "study.class_len=48", "study.heatmap_steps=0,4"])  # 8 files hold out 62 tokens
    assert study.base.model.dtype == "bfloat16" and study.base.data.stdlib_tests
    index = run_study(study, tmp_path / "study", progress=False)
    for scheme in ("rope", "none"):
        assert [r.step for r in read_records(tmp_path / "study" / scheme)] == [0, 2, 4]
        assert [x["step"] for x in read_log(tmp_path / "study" / scheme / em.CLASS_LOG)] == [0, 2, 4]
    html = index.read_text()
    assert "RoPE / NoPE ratio of the largest max ratio" in html and "One seed per scheme" in html

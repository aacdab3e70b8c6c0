"""The sweep (probes.sweep) at a micro size: two settings of a synthetic-corpus study, first one (--only), then
both; the table's values against the per-setting studies' probe records, computed here from the records files;
reruns that train nothing; --report-only; bad overrides named with their setting; a diverged setting reported
while the others run; the shipped configs/sweep_cpu.py varies one driver per setting."""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import train.loop
from probes.__main__ import main
from probes.records import read_records

CONFIGS = Path(__file__).parents[1] / "configs"
MICRO = ["model.d_model=32", "model.num_heads=2", "train.seq_len=32", "train.batch_size=4", "train.steps=6",
         "train.warmup_steps=1", "train.progress=false", "train.eval_batches=1", "train.checkpoint_every=3",
         "study.probe_every=2", "study.probe_rows=4", "study.disrupt_tasks=none", "study.disrupt_every=0",
         "study.schemes=rope,none", "study.heatmap_steps=6"]
SETTINGS = {"base": [], "theta100": ["model.rope_theta=100", "study.lam=1.05"]}  # λ 1.05: crossed, at init
TOKENS = 6 * 4 * 32
QK = ("q", "k", "q_pre", "k_pre")


def _write_config(path: Path, settings: dict, overrides=MICRO) -> Path:
    path.write_text(f"""from probes.study import load_study
from probes.sweep import SweepConfig

SWEEP = SweepConfig(study=load_study({str(CONFIGS / 'study_default.py') + ':SYNTHETIC'!r}, {list(overrides)!r}),
                    settings={settings!r})
""")
    return path


def _sweep(*args):
    assert main(["sweep", *map(str, args)]) == 0


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """(out, config, training calls per invocation, record mtimes of base before the second invocation, sweep.md
    after the first): --only base, then both settings, then both again."""
    tmp = tmp_path_factory.mktemp("sweep")
    config, out = _write_config(tmp / "sweep_micro.py", SETTINGS), tmp / "out"
    calls, real = [], train.loop.run

    def counting(cfg, run_dir, hooks=()):
        calls[-1].append(Path(run_dir).relative_to(out).as_posix())
        return real(cfg, run_dir, hooks=hooks)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train.loop, "run", counting)
        calls.append([])
        _sweep("--config", config, "--out", out, "--only", "base")
        first_md = (out / "sweep.md").read_text()
        mtimes = {p: p.stat().st_mtime_ns for p in (out / "base").rglob("*") if p.is_file()
                  and ("checkpoints" in p.parts or p.parent.name == "probes")}
        for _ in range(2):
            calls.append([])
            _sweep("--config", config, "--out", out)
    return out, config, calls, mtimes, first_md


def _max_ratio(m_LHE) -> float:
    m = np.asarray(m_LHE, np.float64)
    return float((m / m.mean(-1, keepdims=True)).max())


def _expected(run_dir: Path, lam: float) -> dict:
    """From the probe records files alone: the final largest max ratio per site (from the norm matrices), RoPE's K
    low-frequency share (mean over layers) at step 0 and at the end, the first step a Q/K dim crossed lam."""
    records = read_records(run_dir)
    first, last = records[0], records[-1]
    crossed = [r.step for r in records if any(_max_ratio(r.norms[s]) > lam for s in QK if s in r.norms)]
    return {"steps": [r.step for r in records], "tokens": last.tokens_seen,
            "final": {s: _max_ratio(m) for s, m in last.norms.items()},
            "low": (float(np.mean(first.summary["k"]["lowfreq_share"])),
                    float(np.mean(last.summary["k"]["lowfreq_share"]))),
            "first": crossed[0] if crossed else None}


def test_only_trains_the_named_setting_and_the_table_lists_the_rest(swept):
    out, _, calls, _, first_md = swept
    assert sorted(calls[0]) == ["base/none", "base/rope"]
    rows = {r.split(" | ")[0].strip("| "): r for r in first_md.splitlines() if r.startswith("| ")}
    assert "| done |" in rows["base"] and "| not run |" in rows["theta100"]


def test_a_rerun_resumes_without_retraining(swept):
    out, _, calls, mtimes, _ = swept
    assert sorted(calls[1]) == ["theta100/none", "theta100/rope"]  # base was finished: not trained again
    assert calls[2] == []
    assert mtimes and all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    for setting in SETTINGS:
        for scheme in ("rope", "none"):
            assert [r.step for r in read_records(out / setting / scheme)] == [0, 2, 4, 6]
            assert (out / setting / "index.html").is_file()


def test_table_values_are_the_studies_records(swept):
    out = swept[0]
    record = json.loads((out / "sweep.json").read_text())
    md = (out / "sweep.md").read_text()
    assert [r["setting"] for r in record["rows"]] == list(SETTINGS)
    for row in record["rows"]:
        lam = 1.05 if row["setting"] == "theta100" else 5.0
        rope, nope = (_expected(out / row["setting"] / s, lam) for s in ("rope", "none"))
        ratio = {s: rope["final"][s] / nope["final"][s] for s in ("q", "k", "v")}
        ratio |= {"q_pre": rope["final"]["q_pre"] / nope["final"]["q"],
                  "k_pre": rope["final"]["k_pre"] / nope["final"]["k"]}
        assert row["rope_nope"] == {s: [pytest.approx(v, rel=1e-6)] for s, v in ratio.items()}
        assert row["tokens"] == [rope["tokens"]] == [nope["tokens"]] == [TOKENS]
        assert row["rope_k_lowfreq"] == {"init": [pytest.approx(rope["low"][0])],
                                         "final": [pytest.approx(rope["low"][1])]}
        assert row["first_crossing"] == {"rope": [rope["first"]], "none": [nope["first"]]}
        assert row["status"] == "done" and row["overrides"] == SETTINGS[row["setting"]]
        fmt = lambda f: "none" if f is None else "0 (at init)" if f == 0 else str(f)  # noqa: E731
        first = ("none" if rope["first"] is None and nope["first"] is None else
                 f"RoPE {fmt(rope['first'])}, NoPE {fmt(nope['first'])}" + (" (λ=1.05)" if lam != 5.0 else ""))
        cells = [row["setting"], " ".join(SETTINGS[row["setting"]]) or "the base", f"{TOKENS:,}",
                 f"{ratio['q']:.2f}", f"{ratio['k']:.2f}", f"{ratio['v']:.2f}",
                 f"{rope['low'][0]:.2f} → {rope['low'][1]:.2f}", first, "done"]
        assert row["cells"][:-1] == cells
        assert float(row["cells"][-1]) > 0  # train wall s, from the studies' timing.json
        assert "| " + " | ".join(row["cells"]) + " |" in md
    assert "first step a Q/K dim > λ=5" in md and "RoPE / NoPE Q max ratio" in md
    assert record["rows"][1]["first_crossing"]["rope"] != [None], "λ = 1.05 is crossed at this size"


def test_report_only_rebuilds_the_same_table(swept, tmp_path, capsys):
    out, config, *_ = swept
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = (copy / "sweep.md").read_text().replace(str(out), str(copy))
    os.remove(copy / "sweep.md")
    _sweep("--config", config, "--out", copy, "--report-only")
    assert (copy / "sweep.md").read_text().replace(str(out), str(copy)) == before
    assert "| theta100 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(config), "--out", str(copy), "--report-only", "--only", "base"])
    assert e.value.code == 2 and "--report-only trains none" in capsys.readouterr().err


def test_a_changed_setting_is_refused_before_anything_trains(swept, tmp_path, capsys):
    out = swept[0]
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    changed = _write_config(tmp_path / "changed.py",
                            {"base": [], "theta100": ["model.rope_theta=50", "study.lam=1.05"]})
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(changed), "--out", str(copy), "--report-only"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "setting 'theta100'" in err and "model.rope_theta: 100.0 -> 50.0" in err


@pytest.mark.parametrize("settings, message", [
    ({"base": [], "wide": ["model.d_modle=64"]}, "setting 'wide': unknown key 'model.d_modle'"),
    ({"long": ["train.steps=many"]}, "setting 'long': train.steps='many': expected an integer"),
    ({"bad/name": []}, "setting 'bad/name': expected a name of letters"),
])
def test_a_bad_override_names_the_setting_and_the_key(tmp_path, capsys, settings, message):
    config = _write_config(tmp_path / "bad.py", settings)
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(config), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_only_and_a_foreign_directory_are_refused(tmp_path, capsys):
    config = _write_config(tmp_path / "sweep.py", SETTINGS)
    with pytest.raises(SystemExit):
        main(["sweep", "--config", str(config), "--out", str(tmp_path / "out"), "--only", "base,thetta"])
    assert "--only: no setting named 'thetta'; the sweep's settings: base, theta100" in capsys.readouterr().err
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["sweep", "--config", str(config), "--out", str(tmp_path / "study")])
    assert "has no sweep.json, so it is not a sweep directory" in capsys.readouterr().err


def test_a_diverged_setting_is_reported_and_the_others_run(tmp_path, monkeypatch, capsys):
    import probes.sweep

    ran = []

    def fake_run_study(study, out, **kw):
        ran.append(Path(out).name)
        if Path(out).name == "base":
            raise train.loop.NonFiniteLoss("non-finite loss at step 3")
        Path(out).mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(probes.sweep, "run_study", fake_run_study)
    config, out = _write_config(tmp_path / "sweep.py", SETTINGS), tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--config", str(config), "--out", str(out)])
    assert e.value.code == 2 and "training diverged in setting(s) base" in capsys.readouterr().err
    assert ran == ["base", "theta100"]
    rows = {r["setting"]: r for r in json.loads((out / "sweep.json").read_text())["rows"]}
    assert rows["base"]["status"] == "diverged: non-finite loss at step 3" and rows["theta100"]["status"] == "not run"
    _sweep("--config", config, "--out", out, "--report-only")  # the mark survives a rebuild until the setting finishes
    assert "| diverged: non-finite loss at step 3 |" in (out / "sweep.md").read_text()


def test_the_shipped_sweep_varies_one_driver_per_setting():
    from probes.sweep import load_sweep
    from train.config import config_diff

    sweep = load_sweep(CONFIGS / "sweep_cpu.py")
    studies = sweep.studies()
    base = studies["base"].to_dict()
    assert sweep.study.schemes == ("rope", "none") and not sweep.study.token_classes
    assert sweep.study.base.data.kind == "stdlib" and sweep.study.disrupt_tasks == "none"
    keys = {n: [d.split(":")[0] for d in config_diff(base, s.to_dict())] for n, s in studies.items()}
    assert keys == {"base": [], "steps900": ["train.steps", "train.warmup_steps"],
                    "d256": ["model.d_model", "model.num_heads"], "layers4": ["model.num_layers"],
                    "lr3x": ["train.lr"], "theta100": ["model.rope_theta"], "theta1e6": ["model.rope_theta"],
                    "seq512": ["model.max_seq_len", "train.batch_size", "train.seq_len"]}
    assert studies["d256"].base.model.dim_per_head == studies["base"].base.model.dim_per_head == 32
    tokens = {n: s.base.train.batch_size * s.base.train.seq_len for n, s in studies.items()}
    assert set(tokens.values()) == {2048}  # every setting sees the same tokens per step
    assert studies["lr3x"].base.train.lr == pytest.approx(3 * studies["base"].base.train.lr)

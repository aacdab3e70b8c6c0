"""Emergence summaries: a planted massive dim (weights edited between two training runs) is dated to the
first record after the edit; series, pooling of disruption results, logs."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from probes import emergence as em
from probes.records import Record, read_records
from probes.study import load_study, probe_batch, train_scheme

CONFIGS = Path(__file__).parents[1] / "configs"
MICRO = ["model.d_model=32", "model.num_heads=2", "train.seq_len=32", "train.batch_size=4", "train.steps=8",
         "train.warmup_steps=2", "train.progress=false", "study.probe_every=2", "study.disrupt_every=4",
         "study.disrupt_n=2", "study.disrupt_max_new_tokens=3", "study.probe_rows=4", "study.heatmap_steps=8",
         "study.disrupt_modes=none,massive"]
"""As in test_study.py, so both reuse the compiled programs."""
EDIT_AFTER, LAYER, DIM = 4, 1, 3


def _plant(run_dir, cfg):
    """Multiply one dim of W_k in one layer and head by 50 in the checkpoint at EDIT_AFTER."""
    from train import checkpoint
    from train.step import TrainState, init_state

    mngr = checkpoint.manager(run_dir, cfg)
    state = checkpoint.restore(mngr, EDIT_AFTER, init_state(cfg.model, cfg.train))
    wk = state.params["layers"]["wk"]
    params = {**state.params, "layers": {**state.params["layers"], "wk": wk.at[LAYER, :, 0, DIM].multiply(50.0)}}
    mngr.delete(EDIT_AFTER)
    checkpoint.save(mngr, EDIT_AFTER, TrainState(params, state.opt_state))
    mngr.wait_until_finished()
    mngr.close()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    study = load_study(CONFIGS / "study_default.py", MICRO + ["study.schemes=rope", "study.disrupt_tasks=none"])
    batch = probe_batch(study, out)
    cfg = study.scheme_config("rope")
    stopped = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stop_after=EDIT_AFTER))
    train_scheme(study, stopped, out / "rope", batch, [])
    _plant(out / "rope", cfg)
    train_scheme(study, cfg, out / "rope", batch, [])
    return read_records(out / "rope")


def test_planted_dim_is_dated_to_the_first_record_after_the_edit(planted, tmp_path):
    assert [r.step for r in planted] == [0, 2, 4, 6, 8]
    s = em.summarize(planted, lam=5.0)
    k_pre = s["sites"]["k_pre"]
    assert k_pre[LAYER]["first_massive_step"] == EDIT_AFTER + 2
    assert k_pre[LAYER]["largest_rise_step"] == EDIT_AFTER + 2
    assert not k_pre[LAYER]["massive_at_init"] and k_pre[LAYER]["init"] < 5.0 < k_pre[LAYER]["final"]
    assert k_pre[LAYER]["massive_count_init"] == 0 and k_pre[LAYER]["massive_count_final"] >= 1
    assert k_pre[0]["first_massive_step"] is None, "the other layer is untouched"
    assert s["sites"]["q_pre"][LAYER]["first_massive_step"] is None
    assert s["sites"]["v"][LAYER]["first_massive_step"] is None
    assert planted[-1].summary["k_pre"]["top1_dims"][LAYER][0] == DIM
    path = em.emergence_figure(planted, tmp_path / "e.png", lam=5.0, chance=0.25, rotated=True)
    assert path.stat().st_size > 10_000


def _record(step, ratios, shares):
    summary = {"q": {"max_ratio": ratios, "lowfreq_share": shares, "massive_count": [int(r > 5) for r in ratios]}}
    return Record(step, step * 10, {}, summary)


def test_summary_without_a_step0_record_has_no_baseline():
    records = [_record(5, [2.0, 6.0], [0.1, None]), _record(10, [7.0, 5.5], [0.2, 0.5])]
    s = em.summarize(records, lam=5.0)
    layer0, layer1 = s["sites"]["q"]
    assert not s["has_step0"] and layer0["init"] is None and layer0["growth"] is None
    assert layer0["first_massive_step"] == 10 and layer1["first_massive_step"] == 5
    assert layer1["largest_rise_step"] is None, "it only fell"
    assert layer1["lowfreq_final"] == 0.5 and layer0["peak_step"] == 10
    steps, v = em.series(records, "q", "lowfreq_share")
    assert steps.tolist() == [5, 10] and np.isnan(v[0, 1])


def test_accuracy_by_kind_pools_runs_and_splits_mixed_ones():
    mixed = {"task": "jsonl", "n": 4, "kinds": ["contextual", "parametric"], "results": {
        "none": {"accuracy": 0.5, "correct": 2, "by_kind": {"contextual": {"correct": 2, "n": 2},
                                                            "parametric": {"correct": 0, "n": 2}}}}}
    single = {"task": "passkey", "n": 2, "kinds": ["contextual"], "results": {"none": {"accuracy": 1.0, "correct": 2}}}
    acc = em.accuracy_by_kind({"runs": [mixed, single]})
    assert acc["none"]["contextual"] == {"correct": 4, "n": 4, "accuracy": 1.0}
    assert acc["none"]["parametric"]["accuracy"] == 0.0
    assert em.accuracy_by_kind(single)["none"]["contextual"]["n"] == 2


def test_disruption_log_keeps_the_last_line_per_step_and_skips_a_cut_off_line(tmp_path):
    lines = [{"step": 0, "v": 1}, {"step": 4, "v": 1}, {"step": 4, "v": 2}]
    (tmp_path / em.DISRUPTION_LOG).write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 8, "v"')
    assert [(x["step"], x["v"]) for x in em.read_disruption_log(tmp_path)] == [(0, 1), (4, 2)]
    (tmp_path / em.DISRUPTION_LOG).write_text('{"step": 0\n{"step": 4}\n')
    with pytest.raises(ValueError, match="disruption.jsonl, line 1: not valid JSON"):
        em.read_disruption_log(tmp_path)


def test_disruption_summary_gives_drops_only_for_models_that_answer():
    from probes.report_cmd import _disruption_summary

    def acc(none, massive, non_massive):
        return {m: {"contextual": {"accuracy": a, "correct": round(10 * a), "n": 10}}
                for m, a in (("none", none), ("massive", massive), ("non_massive", non_massive))}

    text = _disruption_summary({"rope": {"final_acc": acc(0.9, 0.2, 0.8)}, "none": {"final_acc": acc(0.5, 0.5, 0.4)}})
    assert "RoPE contextual -70 massive vs -10 non-massive" in text and "NoPE contextual +0 massive vs -10" in text
    text = _disruption_summary({"rope": {"final_acc": acc(0.1, 0.0, 0.1)}})
    assert "at most 10% of the items" in text and "Change from" not in text

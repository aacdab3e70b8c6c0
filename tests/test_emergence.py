"""Emergence summaries from records (the planted run is in test_study.py), pooling of disruption
results, disruption logs, and the summary's disruption sentence."""
import json

import numpy as np
import pytest

from probes import emergence as em
from probes.records import Record


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
    with pytest.raises(ValueError, match="disruption.jsonl:1: not valid JSON"):
        em.read_disruption_log(tmp_path)


def test_disruption_summary_gives_drops_only_for_models_that_answer():
    from probes.report import _disruption_summary

    def acc(none, massive, non_massive):
        return {m: {"contextual": {"accuracy": a, "correct": round(10 * a), "n": 10}}
                for m, a in (("none", none), ("massive", massive), ("non_massive", non_massive))}

    text = _disruption_summary({"rope": {"final_acc": acc(0.9, 0.2, 0.8)}, "none": {"final_acc": acc(0.5, 0.5, 0.4)}})
    assert "RoPE contextual -70 massive vs -10 non-massive" in text and "NoPE contextual +0 massive vs -10" in text
    text = _disruption_summary({"rope": {"final_acc": acc(0.1, 0.0, 0.1)}})
    assert "at most 10% of the items" in text and "Change from" not in text

"""Frequency classes of head dims: low-frequency quarter of the rotated dims, unrotated dims as their own class
(partial rotary, GPT-NeoX/Pythia), and the hypothetical map of models without rotation, in the summaries, the
`python -m probes massive` record and the report."""
import json

import numpy as np
import pytest

from hf_testlib import random_params, save, tiny_hf, tiny_tokenizer
from minimal_lm import ModelConfig
from probes import emergence as em
from probes import massive
from probes.__main__ import main
from probes.massive_cmd import massive_report
from probes.records import Record, make_record
from probes.report import emergence_paragraphs, emergence_section

# head_dim 32, a quarter rotated (Pythia's rotary_pct): dims 0..7 rotate (4 frequencies, j mod 4), 8..31 do not.
PARTIAL = ModelConfig(vocab_size=64, d_model=64, num_layers=2, num_heads=2, head_dim=32, max_seq_len=32,
                      position="rope", rope_fraction=0.25)
LOW, UNROT = [3, 7], list(range(8, 32))


def test_partial_rotary_map_has_three_classes_and_their_chances():
    f = massive.frequency_map(PARTIAL)
    assert f["freq_E"].tolist() == [0, 1, 2, 3] * 2 + [-1] * 24 and f["rotary_dim"] == 8
    assert np.flatnonzero(f["low_E"]).tolist() == LOW and np.flatnonzero(f["unrot_E"]).tolist() == UNROT
    assert not (f["low_E"] & f["unrot_E"]).any(), "an unrotated dim is never low frequency"
    assert f["chance_lowfreq"] == f["chance_share"] == 2 / 32 and f["chance_unrotated"] == 24 / 32
    assert f["chance_lowfreq_rotated"] == 2 / 8
    assert f["rotated"] and not f["hypothetical"] and f["label"] == ""
    full = massive.frequency_map(PARTIAL.replace(rope_fraction=1.0))  # full rotation: the old values
    assert full["chance_share"] == full["chance_lowfreq"] == full["chance_lowfreq_rotated"] == 0.25
    assert full["chance_unrotated"] == 0.0 and not full["unrot_E"].any()


def _norms(dims_by_layer, size=50.0):
    """Hand-built M [layers, heads, 32]: ones, and `size` at the given dims of every head of each layer."""
    m = np.ones((len(dims_by_layer), 2, 32))
    for layer, dims in enumerate(dims_by_layer):
        m[layer][:, dims] = size
    return m


def test_mass_in_unrotated_dims_is_unrotated_not_low_frequency():
    freq = massive.frequency_map(PARTIAL)
    s = massive.summarize(_norms([[20], [7]]), freq, lam=5.0, k=1)
    assert s["unrotated_share"] == [1.0, 0.0] and s["lowfreq_share"] == [0.0, 1.0]
    assert s["unrotated_share_threshold"] == [1.0, 0.0] and s["lowfreq_share_threshold"] == [0.0, 1.0]
    assert s["lowfreq_share_rotated"] == [None, 1.0], "layer 0's top dims are all unrotated: no rotated mass"
    assert s["top_freq_index"][0] == 32 + 20, "an unrotated dim is its own index, head_dim + j"


def test_shares_are_of_the_selected_mass_over_all_dims():
    """Top-2 dims {3 (low), 9 (unrotated)} of equal size: half each; low + unrotated + other rotated = 1."""
    freq = massive.frequency_map(PARTIAL)
    s = massive.summarize(_norms([[3, 9], [1, 2]]), freq, lam=5.0, k=2)
    assert s["lowfreq_share"] == [0.5, 0.0] and s["unrotated_share"] == [0.5, 0.0]
    assert s["lowfreq_share_rotated"] == [1.0, 0.0]
    assert massive.class_share(_norms([[3, 9]]), np.ones((1, 2, 32), bool), freq["unrot_E"]) == [
        pytest.approx((24 - 1 + 50) / (32 - 2 + 100))]


def test_the_emergence_summary_and_report_show_unrotated_dims_with_their_chance(tmp_path):
    freq = massive.frequency_map(PARTIAL)
    records = [make_record(step, 0, {site: _norms(dims) for site in ("q", "k", "v", "q_pre", "k_pre")}, freq)
               for step, dims in ((0, [[1], [2]]), (100, [[20], [3]]))]
    s = em.summarize(records)
    layer0 = s["sites"]["q"][0]
    assert layer0["unrotated_init"] == 0.0 and layer0["unrotated_final"] == 1.0 and layer0["lowfreq_final"] == 0.0
    d = {"records": records, "summary": s, "freq": freq, "model": PARTIAL}
    text = " ".join(emergence_paragraphs({"pythia": d}, {"lam": 5.0, "top_k": 1}))
    assert "8 rotated of 32 dims" in text and "chance 0.06" in text
    assert "24 unrotated dims" in text and "chance 0.75" in text and "after rotation Q 0.00 → 0.50" in text
    assert "→ 1.00 (unrotated dim 20;" in text, "the heads' common top dim is named as unrotated"
    section = emergence_section("pythia", d, {"lam": 5.0, "top_k": 1, "heatmap_steps": [100], "heatmap_layers": [0]},
                                tmp_path, tmp_path)
    assert "unrotated @0" in section.tables[0].headers
    assert "unrotated 0.75" in section.tables[0].caption and "share in unrotated dims" in section.figures[0].caption
    # records written before unrotated_share existed still summarize (None) and report
    old = [Record(r.step, r.tokens_seen, r.norms, {site: {k: v for k, v in x.items() if not k.startswith("unrot")}
                                                   for site, x in r.summary.items()}) for r in records]
    assert em.summarize(old)["sites"]["q"][0]["unrotated_final"] is None
    assert "Q n/a → n/a" in " ".join(emergence_paragraphs({"old": {**d, "records": old, "summary": em.summarize(old)}},
                                                          {"lam": 5.0, "top_k": 1}))


def test_massive_report_of_a_partial_rotary_model_records_both_shares(tmp_path):
    rec = massive_report(random_params(PARTIAL), PARTIAL, [[1, 2, 3, 4, 5, 6], [7, 8, 9]], tmp_path,
                         sites=("q", "q_pre"), layers=[0], progress=False)
    f = rec["frequency"]
    assert f["unrotated_dims"] == UNROT and f["lowfreq_dims"] == LOW and f["rotary_dim"] == 8
    assert f["chance_lowfreq"] == f["chance_share"] == 0.0625 and f["chance_unrotated"] == 0.75
    assert f["hypothetical"] is False and f["label"] == ""
    for site in ("q", "q_pre"):
        low, unrot = rec[site]["lowfreq_share"], rec[site]["unrotated_share"]
        assert len(unrot) == 2 and all(a + b <= 1 + 1e-9 for a, b in zip(low, unrot))
    html = (tmp_path / "index.html").read_text()
    assert "rotation: rope on 8 of 32 dims per head" in html and "unrotated share" in html
    assert "24 do not rotate" in html and "unrotated 0.75" in html


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tiny GPT-2 (learned absolute positions, no rotation) with a tokenizer."""
    path = tmp_path_factory.mktemp("gpt2")
    return tiny_tokenizer(save(tiny_hf("gpt2", vocab_size=300), path))


def test_massive_on_a_model_without_rotation_labels_the_map_hypothetical(gpt2, tmp_path, capsys):
    out = tmp_path / "out"
    main(["massive", "--model", gpt2, "--out", str(out), "--sites", "q,k,v", "--layers", "0", "--max-len", "16"])
    printed = capsys.readouterr().out
    rec = json.loads((out / "massive.json").read_text())
    assert rec["model"]["rotation"] == "none" and rec["model"]["position"] == "learned"
    f = rec["frequency"]
    assert f["hypothetical"] is True and f["label"].startswith("hypothetical: this model does not rotate")
    assert "position=learned" in f["label"] and f["chance_share"] == 0.25 and "no rotation" in f["note"]
    assert "hypothetical map" in printed
    html = (out / "index.html").read_text()
    assert html.count("hypothetical: this model does not rotate") >= 2 and "red marks" not in html

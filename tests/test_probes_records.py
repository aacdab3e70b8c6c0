"""Probe records over training: atomic, resumable, and faithful to the weights at each step."""
import os

import jax
import numpy as np
import pytest

from minimal_lm import ModelConfig, init_params
from probes.massive import norm_matrices
from probes.records import Record, TrainingProbe, drop_after, read_records, write_record
from probes.sinks import first_token_mass

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=32)


@pytest.fixture(scope="module")
def probe():
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 64)
    return TrainingProbe(CFG, tokens, sites=("q", "k_pre", "v"))


def test_record_equals_norm_matrices_and_round_trips(tmp_path, probe):
    params = init_params(CFG, jax.random.key(1))
    rec = probe(tmp_path, params, step=10, tokens_seen=320)
    ref, _ = norm_matrices(params, CFG, [(probe.tokens_BT, probe.mask_BT)], sites=("q", "k_pre", "v"), progress=False)
    for site in ref:
        np.testing.assert_allclose(rec.norms[site], ref[site], rtol=1e-6)
    [back] = read_records(tmp_path)
    assert back.step == 10 and back.tokens_seen == 320 and back.summary == rec.summary
    assert back.norms["k_pre"].shape == (2, 2, 8)


def test_one_forward_gives_the_norms_and_sinks_of_the_separate_measures():
    """TrainingProbe's single explicit-attention pass == the fused-attention norms and the sink measure,
    on a left-padded batch."""
    tokens = np.asarray(jax.random.randint(jax.random.key(3), (3, 16), 0, 64))
    mask = np.arange(16)[None] >= np.array([[0], [5], [11]])
    params = init_params(CFG, jax.random.key(4))
    rec = TrainingProbe(CFG, tokens, mask, sites=("q", "k", "v")).measure(params, 0, 0)
    ref, _ = norm_matrices(params, CFG, [(tokens, mask)], sites=("q", "k", "v"), progress=False)
    for site in ref:
        np.testing.assert_allclose(rec.norms[site], ref[site], rtol=2e-5)
    alpha, n = first_token_mass(params, CFG, [(tokens, mask)], progress=False)
    assert n == mask.sum()
    np.testing.assert_allclose(rec.sinks["first_token_mass"], alpha, rtol=1e-5, atol=2e-6)  # stored to 6 places


def test_rewriting_a_step_replaces_it_and_drop_after_trims_the_series(tmp_path, probe):
    params = init_params(CFG, jax.random.key(2))
    for step in (0, 5, 10, 15):
        probe(tmp_path, params, step, step * 32)
    probe(tmp_path, params, 10, 320)
    assert [r.step for r in read_records(tmp_path)] == [0, 5, 10, 15]
    assert drop_after(tmp_path, 5) == [10, 15]
    assert [r.step for r in read_records(tmp_path)] == [0, 5]


def test_damaged_record_and_leftover_temp_file_do_not_hide_the_rest(tmp_path):
    norms = {"q": np.ones((1, 2, 4), np.float32)}
    write_record(tmp_path, Record(1, 10, norms, {"q": {}}))
    path = write_record(tmp_path, Record(2, 20, norms, {"q": {}}))
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    (tmp_path / "probes" / ".tmp_123_step_00000003.npz").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="step_00000002.npz"):
        records = read_records(tmp_path)
    assert [r.step for r in records] == [1]


def test_planted_edit_shows_in_the_record_of_that_step(tmp_path, probe):
    params = init_params(CFG, jax.random.key(3))
    probe(tmp_path, params, 0, 0)
    planted = jax.tree.map(lambda a: a, params)
    planted["layers"]["wk"] = params["layers"]["wk"].at[1, :, 0, 3].multiply(50.0)
    probe(tmp_path, planted, 1, 32)
    before, after = read_records(tmp_path)
    assert before.summary["k_pre"]["massive_count"][1] == 0
    assert after.summary["k_pre"]["massive_count"][1] >= 1
    assert after.summary["k_pre"]["top1_dims"][1][0] == 3
    assert after.summary["k_pre"]["massive_count"][0] == before.summary["k_pre"]["massive_count"][0]


def test_record_holds_sinks_and_old_records_without_them_still_load(tmp_path, probe):
    from probes import emergence as em
    from probes.report import sink_paragraph
    from probes.sinks import first_token_mass

    params = init_params(CFG, jax.random.key(4))
    rec = probe(tmp_path, params, step=20, tokens_seen=640)
    alpha_LH, _ = first_token_mass(params, CFG, [(probe.tokens_BT, probe.mask_BT)], progress=False)
    np.testing.assert_allclose(rec.sinks["first_token_mass"], alpha_LH, atol=1e-6)
    assert rec.sinks["eps"] == 0.3 and rec.sinks["sink_share"] == (np.asarray(alpha_LH) > 0.3).mean()
    write_record(tmp_path, Record(10, 320, rec.norms, rec.summary))  # as written before sinks were recorded
    old, new = read_records(tmp_path)
    assert old.sinks is None and new.sinks == rec.sinks
    s = em.summarize([old, new])["sinks"]
    assert s["recorded"] == 1 and s["missing"] == 1 and s["first_step"] == 20
    assert "old not recorded" in sink_paragraph({"old": {"summary": em.summarize([old])}})

"""`python -m probes massive` end to end on a tiny HF Llama checkpoint with a planted massive dim."""
import json

import jax
import matplotlib.image
import numpy as np
import pytest
import torch

from hf_testlib import save, tiny_hf, tiny_tokenizer
from minimal_lm import ModelConfig, init_params
from probes.__main__ import main
from probes.massive import PROBE_SITES, threshold_mask, topk_dims
from probes.massive_cmd import massive_report
from probes.prompts import DEFAULT_PROMPTS

H, K, E, L, DIM = 4, 2, 16, 2, 7  # DIM: lowest-frequency dim of the first half (rotate_half)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama with one column of W_q and W_k scaled up in layer 1, plus a BPE tokenizer."""
    path = tmp_path_factory.mktemp("tiny_llama")
    model = tiny_hf("llama", seed=0, vocab_size=320)
    with torch.no_grad():
        attn = model.model.layers[1].self_attn
        for proj, heads in ((attn.q_proj, H), (attn.k_proj, K)):
            proj.weight[[h * E + DIM for h in range(heads)]] *= 25.0
    tiny_tokenizer(save(model, path), vocab_size=300)
    return path


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    lines = [json.dumps({"prompt": p, "answer": "x"}) for p in DEFAULT_PROMPTS] + [json.dumps("Short one.")]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_writes_npz_json_figures_and_html(checkpoint, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    main(["massive", "--model", str(checkpoint), "--out", str(out), "--prompts", str(prompts_file), "--chat",
          "--batch-size", "2", "--max-len", "32", "--layers", "0,1", "--init-baseline"])
    printed = capsys.readouterr().out
    assert "wrote" in printed and "sinks  share of heads with first-token mass > 0.3" in printed
    with np.load(out / "massive.npz", allow_pickle=False) as z:
        ms = {k: z[k] for k in z.files}
    assert sorted(ms) == sorted(PROBE_SITES)
    for site in PROBE_SITES:
        assert ms[site].shape == (L, H if site.startswith("q") else K, E) and ms[site].dtype == np.float32
    rec = json.loads((out / "massive.json").read_text())
    s = rec["settings"]
    assert s["sites"] == list(PROBE_SITES) and s["lambda"] == 5.0 and s["top_k"] == 1 and s["layers"] == [0, 1]
    assert s["prompts"] == len(DEFAULT_PROMPTS) + 1 and s["tokens"] > 100
    assert s["max_len"] == 32 and s["truncated_prompts"] >= 1 and s["chat"] is True
    assert rec["model"]["rotation"] == "rope" and rec["frequency"]["lowfreq_dims"] == [6, 7, 14, 15]
    for site in PROBE_SITES:
        heads = ms[site].shape[1]
        r = rec[site]
        assert r["top1_dims"] == topk_dims(ms[site], 1)[..., 0].tolist()
        assert len(r["top1_dims"]) == L and all(len(row) == heads for row in r["top1_dims"])
        assert r["massive_count"] == threshold_mask(ms[site], 5.0).sum((1, 2)).tolist()
        assert len(r["lowfreq_share"]) == L and all(0 <= x <= 1 for x in r["lowfreq_share"])
        assert len(rec["init_baseline"][site]["lowfreq_share"]) == L
    for site in ("q_pre", "k_pre", "q", "k"):
        heads = ms[site].shape[1]
        assert rec[site]["massive_count"] == [0, heads], site
        assert rec[site]["top1_dims"][1] == [DIM] * heads and rec[site]["lowfreq_share"][1] == 1.0
    assert rec["v"]["massive_count"] == [0, 0]
    alpha_LH = np.array(rec["sinks"]["first_token_mass"])
    assert alpha_LH.shape == (L, H) and ((alpha_LH > 0) & (alpha_LH <= 1)).all()
    assert rec["sinks"]["sink_share"] == (alpha_LH > 0.3).mean() and rec["sinks"]["queries"] == s["tokens"]
    assert len(rec["init_baseline"]["sinks"]["mean_mass"]) == L
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["first_token_mass.png", "heads_dims_layer0.png", "heads_dims_layer1.png", "layers_dims.png",
                    "lowfreq_share.png"]
    for name in pngs:
        img = matplotlib.image.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    html = (out / "index.html").read_text()
    assert all(f'src="{name}"' in html for name in pngs) and "<table>" in html and "q_pre" in html
    assert "Attention sinks" in html and "sink heads (&gt; 0.3)" in html


def test_cli_text_file_default_layers_and_site_subset(checkpoint, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("The grass is green.\nThe sky is blue.\n\n\nHere we go. There and back again.\n")
    out = tmp_path / "out"
    main(["massive", "--model", str(checkpoint), "--out", str(out), "--text-file", str(text), "--sites", "q,v"])
    rec = json.loads((out / "massive.json").read_text())
    assert rec["settings"]["prompts"] == 2 and rec["settings"]["layers"] == [0, 1]
    assert set(rec) >= {"q", "v"} and "k" not in rec and "init_baseline" not in rec
    with np.load(out / "massive.npz") as z:
        assert sorted(z.files) == ["q", "v"]


@pytest.mark.parametrize("args, message", [
    (["--layers", "0,2"], "layer(s) [2] out of range 0..1"),
    (["--sites", "q,resid"], "expected one or more of q, k, v, q_pre, k_pre"),
    (["--top-k", "17"], "top-k=17"),
    (["--prompts", "missing.jsonl"], "missing.jsonl"),
])
def test_cli_bad_input_names_the_value(checkpoint, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(["massive", "--model", str(checkpoint), "--out", str(tmp_path / "o"), *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_report_on_a_model_without_rotation_says_so(tmp_path):
    """massive_report works on any params; for NoPE it keeps the RoPE index map and marks rotation none."""
    cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=1, num_heads=2, max_seq_len=32, position="none")
    params = init_params(cfg, jax.random.PRNGKey(0))
    rec = massive_report(params, cfg, [[1, 2, 3, 4, 5], [7, 8, 9]], tmp_path, sites=("q", "q_pre", "v"),
                         progress=False)
    assert rec["model"]["rotation"] == "none" and "no rotation" in rec["frequency"]["note"]
    assert rec["frequency"]["freq_index"] == list(range(8)) * 2 and rec["settings"]["tokens"] == 8
    with np.load(tmp_path / "massive.npz") as z:
        np.testing.assert_array_equal(z["q"], z["q_pre"])
    assert "rotation: none" in (tmp_path / "index.html").read_text()

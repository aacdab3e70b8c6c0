"""M for q, k, v before and after RoPE equals norms of Hugging Face's own projections and rotary
embedding on a tiny random Llama (float32, eager attention)."""
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from minimal_lm import ModelConfig
from probes import massive

H, K, E, D, L = 4, 2, 16, 64, 2


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=D, intermediate_size=128, num_hidden_layers=L,
                      num_attention_heads=H, num_key_value_heads=K, head_dim=E, max_position_embeddings=128,
                      rope_theta=500.0, tie_word_embeddings=False, attn_implementation="eager")
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():  # make the projections less uniform than the 0.02 init so the test has contrast
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.weight.mul_(torch.linspace(0.2, 3.0, proj.weight.shape[0])[:, None])
    return model


def to_ours(model):
    """Our params from HF Llama weights (no constants folded in)."""
    c = model.config
    cfg = ModelConfig(vocab_size=c.vocab_size, d_model=D, num_layers=L, num_heads=H, num_kv_heads=K, head_dim=E,
                      mlp_dim=c.intermediate_size, max_seq_len=c.max_position_embeddings, rope_theta=500.0,
                      tie_embeddings=False, norm_eps=c.rms_norm_eps)
    w = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    def stack(name, f):
        return np.stack([f(w[f"model.layers.{i}.{name}"]) for i in range(L)])

    layers = {
        "attn_norm": stack("input_layernorm.weight", lambda a: a),
        "mlp_norm": stack("post_attention_layernorm.weight", lambda a: a),
        "wq": stack("self_attn.q_proj.weight", lambda a: a.T.reshape(D, H, E)),
        "wk": stack("self_attn.k_proj.weight", lambda a: a.T.reshape(D, K, E)),
        "wv": stack("self_attn.v_proj.weight", lambda a: a.T.reshape(D, K, E)),
        "wo": stack("self_attn.o_proj.weight", lambda a: a.T.reshape(H, E, D)),
        "w_gate": stack("mlp.gate_proj.weight", lambda a: a.T),
        "w_up": stack("mlp.up_proj.weight", lambda a: a.T),
        "w_down": stack("mlp.down_proj.weight", lambda a: a.T),
    }
    params = {"embed": w["model.embed_tokens.weight"], "layers": layers, "final_norm": w["model.norm.weight"],
              "position": {}, "unembed": w["lm_head.weight"].T}
    return cfg, params


def hf_norms(model, tokens_BT):
    """M per site from HF's q_proj/k_proj/v_proj outputs (forward hooks) and its apply_rotary_pos_emb."""
    outs = {}
    hooks = [getattr(layer.self_attn, f"{n}_proj").register_forward_hook(
        lambda mod, inp, out, key=(i, n): outs.__setitem__(key, out.detach()))
        for i, layer in enumerate(model.model.layers) for n in "qkv"]
    ids = torch.tensor(tokens_BT)
    with torch.no_grad():
        model(ids)
        pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
        cos, sin = model.model.rotary_emb(outs[0, "q"], pos)
    for h in hooks:
        h.remove()
    B, T = ids.shape
    m = {s: [] for s in massive.PROBE_SITES}
    for i in range(L):
        q = outs[i, "q"].view(B, T, H, E).transpose(1, 2)
        k = outs[i, "k"].view(B, T, K, E).transpose(1, 2)
        v = outs[i, "v"].view(B, T, K, E).transpose(1, 2)
        q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
        for site, x in (("q_pre", q), ("k_pre", k), ("q", q_rot), ("k", k_rot), ("v", v)):
            m[site].append(np.sqrt((x.double().numpy() ** 2).sum((0, 2))))
    return {s: np.stack(v) for s, v in m.items()}


def test_norms_match_hf_projections_and_rotary(hf_model):
    tokens_BT = np.random.default_rng(1).integers(0, 96, (3, 40)).astype(np.int32)
    want = hf_norms(hf_model, tokens_BT)
    cfg, params = to_ours(hf_model)
    ms, n = massive.norm_matrices(params, cfg, [(tokens_BT, np.ones(tokens_BT.shape, bool))], progress=False)
    assert n == tokens_BT.size
    for site in massive.PROBE_SITES:
        np.testing.assert_allclose(ms[site], want[site], rtol=1e-5, err_msg=site)
    assert not np.allclose(ms["q"], ms["q_pre"], rtol=1e-3)


def test_planted_column_in_hf_weights_is_found_by_both_rules(hf_model):
    """Scale the q_proj and k_proj output rows of one dim in every head of layer 0 (one column of W_q, W_k)."""
    cfg, params = to_ours(hf_model)
    dim = E // 2 - 1
    for w in ("wq", "wk"):
        params["layers"][w] = params["layers"][w].copy()
        params["layers"][w][0, :, :, dim] *= 25.0
    tokens_BT = np.random.default_rng(2).integers(0, 96, (2, 24)).astype(np.int32)
    ms, _ = massive.norm_matrices(params, cfg, [(tokens_BT, np.ones(tokens_BT.shape, bool))], progress=False)
    for site, heads in (("q_pre", H), ("q", H), ("k_pre", K), ("k", K)):
        want = {(0, h, dim) for h in range(heads)}
        assert massive.threshold_rule(ms[site]) == want, site
        assert {s for s in massive.topk_rule(ms[site], 1) if s[0] == 0} == want, site
    assert massive.threshold_rule(ms["v"]) == set()

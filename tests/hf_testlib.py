"""Tiny random Hugging Face models and a tiny tokenizer, built inside the tests (no downloads)."""
import json
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
         "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
         "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"), "gpt2": ("GPT2Config", "GPT2LMHeadModel"),
         "opt": ("OPTConfig", "OPTForCausalLM"), "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM"),
         "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM")}
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
# Each family's tiny config, in the family's own config spelling (what its config.json will hold). Windows are
# smaller than the 256-token test prompts so they really apply; Gemma 2's caps are small enough to bite and its
# head_dim (24) differs from hidden_size / heads (16) and from query_pre_attn_scalar (32), as in the real models.
FAMILY = {
    "llama": BASE, "mistral": BASE, "qwen2": BASE,
    "qwen3": {**BASE, "head_dim": 16},  # Qwen3Config's default head_dim is 128, not hidden_size // heads
    "gemma2": dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=24, max_position_embeddings=512, rms_norm_eps=1e-6,
                   query_pre_attn_scalar=32, sliding_window=32, attn_logit_softcapping=5.0,
                   final_logit_softcapping=3.0),  # layer_types default: even layers (0, 2) sliding
    "gpt2": dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=512, layer_norm_epsilon=1e-5,
                 bos_token_id=127, eos_token_id=127),  # n_inner None: MLP 4 * 64, as in the real configs
    "opt": dict(vocab_size=128, hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512, word_embed_proj_dim=64, do_layer_norm_before=True, enable_bias=True),
    "gpt_neo": dict(vocab_size=128, hidden_size=64, num_layers=4, num_heads=4, max_position_embeddings=512,
                    window_size=16, attention_types=[[["global", "local"], 2]], bos_token_id=127, eos_token_id=127),
    "gpt_neox": dict(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=512, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
                     layer_norm_eps=1e-5),
}
NO_ROTARY = ("gpt2", "opt", "gpt_neo")  # learned absolute positions instead
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_hf(arch="llama", seed=0, **kw):
    """A random float32 HF model with eager attention. Every weight (norms, biases and learned position tables
    included) is random, with a scale that gives logits of order 1, so parity is tested on non-trivial numbers:
    norm scales N(1, 0.1) (Gemma 2 stores w with scale 1 + w: w ~ N(0, 0.1)), everything else N(0, 0.15).
    kw override FAMILY[arch] (the family's own config keys)."""
    config_cls, model_cls = (getattr(transformers, n) for n in ARCHS[arch])
    torch.manual_seed(seed)
    config = config_cls(**{**FAMILY[arch], **kw}, attn_implementation="eager")
    model = model_cls(config).float().eval()
    norm_params = {f"{mod_name}.{p_name}" if mod_name else p_name: p_name
                   for mod_name, mod in model.named_modules()
                   if isinstance(mod, torch.nn.LayerNorm) or "RMSNorm" in type(mod).__name__
                   for p_name, _ in mod.named_parameters(recurse=False)}
    scale_mean = 0.0 if config.model_type == "gemma2" else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            p.copy_(scale_mean + 0.1 * torch.randn_like(p) if norm_params.get(name) == "weight"
                    else 0.15 * torch.randn_like(p))
    return model


def save(model, path, **kw):
    model.save_pretrained(path, **kw)
    return str(path)


def hf_layers(model):
    """Each layer's attention module, for any family in ARCHS."""
    t = model.config.model_type
    if t == "gpt2":
        return [block.attn for block in model.transformer.h]
    if t == "gpt_neo":
        return [block.attn.attention for block in model.transformer.h]
    if t == "gpt_neox":
        return [layer.attention for layer in model.gpt_neox.layers]
    if t == "opt":
        return [layer.self_attn for layer in model.model.decoder.layers]
    return [layer.self_attn for layer in model.model.layers]


def hf_layer_windows(model):
    """Per layer, the window HF applies (0 = full causal attention): a key is visible to a query when
    0 <= q - k < window (GPT-Neo's local layers and HF's sliding_window masks alike)."""
    c, t = model.config, model.config.model_type
    if t == "gpt_neo":
        return [c.window_size if kind == "local" else 0 for kind in c.attention_layers]
    if t == "mistral":
        return [c.sliding_window or 0] * c.num_hidden_layers
    if t in ("gemma2", "qwen2", "qwen3"):
        return [c.sliding_window if kind == "sliding_attention" else 0 for kind in c.layer_types]
    return [0] * len(hf_layers(model))


def hf_sites(model, tokens_BT):
    """Logits and every layer's attention sites from HF itself, site -> [L, ...]:
    q_proj, k_proj, v: the projections' outputs as [B, T, heads, E] (forward hooks on q_proj/k_proj/v_proj;
      GPT-2's c_attn split into q|k|v; GPT-NeoX's query_key_value per head [q|k|v]); K and V have KV heads;
      OPT's q is the raw q_proj output (HF scales it by E**-0.5 after the projection);
    q_pre, k_pre: after Qwen3's q_norm/k_norm (hooks on them), before rotation; = q_proj, k_proj elsewhere;
    q, k: after the model's own rotary_emb and apply_rotary_pos_emb (NeoX: only the first rotary_ndims dims);
      = q_pre, k_pre for GPT-2, OPT and GPT-Neo;
    attn_probs: [B, H, T, S], the eager attention weights HF returns with output_attentions=True."""
    t = model.config.model_type
    layers = hf_layers(model)
    outs, hooks = {}, []

    def keep(mod, key):
        hooks.append(mod.register_forward_hook(lambda m, inp, out: outs.__setitem__(key, out.detach())))

    for i, attn in enumerate(layers):
        if t == "gpt2":
            keep(attn.c_attn, (i, "qkv"))
        elif t == "gpt_neox":
            keep(attn.query_key_value, (i, "qkv"))
        else:
            for n in "qkv":
                keep(getattr(attn, f"{n}_proj"), (i, n))
        if t == "qwen3":
            keep(attn.q_norm, (i, "q_norm"))
            keep(attn.k_norm, (i, "k_norm"))
    tokens = torch.tensor(np.asarray(tokens_BT))
    B, T = tokens.shape
    try:
        with torch.no_grad():
            out = model(tokens, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    rotary = None if t in NO_ROTARY else (model.gpt_neox if t == "gpt_neox" else model.model).rotary_emb
    sites = {s: [] for s in ("q_proj", "k_proj", "q_pre", "k_pre", "q", "k", "v", "attn_probs")}
    with torch.no_grad():
        for i, attn in enumerate(layers):
            E = getattr(attn, "head_dim", None) or attn.head_size
            if t == "gpt2":
                q, k, v = (x.reshape(B, T, -1, E) for x in outs[(i, "qkv")].split(attn.split_size, dim=2))
            elif t == "gpt_neox":
                q, k, v = outs[(i, "qkv")].reshape(B, T, -1, 3 * E).chunk(3, dim=-1)
            else:
                q, k, v = (outs[(i, n)].reshape(B, T, -1, E) for n in "qkv")
            q_pre, k_pre = (outs[(i, "q_norm")], outs[(i, "k_norm")]) if t == "qwen3" else (q, k)
            if rotary is None:
                q_rot, k_rot = q_pre, k_pre
            else:
                cos, sin = rotary(q_pre, torch.arange(T)[None].expand(B, T))
                rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
                q_rot, k_rot = (x.transpose(1, 2) for x in rotate(q_pre.transpose(1, 2), k_pre.transpose(1, 2),
                                                                  cos, sin))
            for site, x in (("q_proj", q), ("k_proj", k), ("q_pre", q_pre), ("k_pre", k_pre), ("q", q_rot),
                            ("k", k_rot), ("v", v), ("attn_probs", out.attentions[i])):
                sites[site].append(x.float().numpy())
    return out.logits.float().numpy(), {s: np.stack(xs) for s, xs in sites.items()}


def generate_hf(model, tokens, n, pad_id=None, eos_token_id=None):
    """HF greedy reference (model.generate, do_sample=False): the new tokens only, one list per prompt.
    tokens: a [B, T] array or a list of prompts of any lengths (left-padded with an attention mask; HF then
    derives positions from the mask, so each row starts at position 0). Without eos_token_id (the model's
    own is overridden) exactly n tokens come back; with it, each row ends at its first eos."""
    prompts = [list(map(int, p)) for p in tokens]
    pad = pad_id if pad_id is not None else (model.config.pad_token_id or 0)
    P = max(map(len, prompts))
    ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=pad,
                             eos_token_id=eos_token_id)[:, P:].tolist()
    if eos_token_id is not None:
        out = [row[:row.index(eos_token_id) + 1] if eos_token_id in row else row for row in out]
    return out


def tiny_tokenizer(path, vocab_size=300, add_bos_token=None, chat_template_file=False):
    """A byte-level BPE tokenizer trained on a few sentences, with <s>, </s>, <pad> and a chat template,
    written as tokenizer.json + tokenizer_config.json (+ chat_template.jinja when asked)."""
    os.makedirs(path, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["The grass is green. The sky is blue. The sun is yellow.", "Here we go. There and back again.",
              "The pass key is 12345. Remember it.", "Is the city of Paris in France? Yes."] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(os.path.join(path, "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True},
              "pad_token": "<pad>", "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512}
    if add_bos_token is not None:
        config["add_bos_token"] = add_bos_token
    if chat_template_file:
        with open(os.path.join(path, "chat_template.jinja"), "w") as f:
            f.write(CHAT_TEMPLATE)
    else:
        config["chat_template"] = CHAT_TEMPLATE
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


def random_params(cfg, seed=0, std=0.15):
    """Params of init_params' structure filled by numpy (no compilation): weights N(0, std), norm
    scales N(1, 0.1), biases N(0, std), so parity is tested with nothing left at a trivial value."""
    import jax

    from minimal_lm import init_params

    rng = np.random.RandomState(seed)
    shapes = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        x = rng.normal(1.0, 0.1, s.shape) if "norm" in name else rng.normal(0.0, std, s.shape)
        return jax.numpy.asarray(x.astype(np.float32))

    return jax.tree_util.tree_map_with_path(fill, shapes)

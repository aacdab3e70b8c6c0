"""Tiny random Hugging Face models and a tiny tokenizer, built inside the tests (no downloads)."""
import json
import os
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders

ARCHS = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
         "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6)
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_hf(arch="llama", seed=0, **kw):
    """A random float32 HF model with eager attention. Every weight (norms and biases included) is
    random, with a scale that gives logits of order 1, so parity is tested on non-trivial numbers."""
    config_cls, model_cls = (getattr(transformers, n) for n in ARCHS[arch])
    torch.manual_seed(seed)
    config = config_cls(**{**BASE, **kw}, attn_implementation="eager")
    model = model_cls(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


def save(model, path, **kw):
    model.save_pretrained(path, **kw)
    return str(path)


def hf_sites(model, tokens_BT):
    """Every layer's q/k/v before and after RoPE from HF itself: forward hooks on q_proj/k_proj/v_proj,
    then the model's own rotary_emb and apply_rotary_pos_emb. Returns site -> [L, B, T, heads, E]."""
    c = model.config
    E = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    outs = {}
    hooks = [getattr(layer.self_attn, f"{n}_proj").register_forward_hook(
        lambda mod, inp, out, key=(i, n): outs.__setitem__(key, out.detach()))
        for i, layer in enumerate(model.model.layers) for n in "qkv"]
    tokens = torch.tensor(np.asarray(tokens_BT))
    with torch.no_grad():
        logits = model(tokens).logits.numpy()
        B, T = tokens.shape
        positions = torch.arange(T)[None].expand(B, T)
        cos, sin = model.model.rotary_emb(outs[(0, "q")], positions)
    for h in hooks:
        h.remove()
    rotate = sys.modules[type(model).__module__].apply_rotary_pos_emb
    sites = {s: [] for s in ("q_pre", "k_pre", "q", "k", "v")}
    for i in range(c.num_hidden_layers):
        q, k, v = (outs[(i, n)].view(B, T, -1, E) for n in "qkv")
        q_rot, k_rot = rotate(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        for site, x in (("q_pre", q), ("k_pre", k), ("v", v), ("q", q_rot.transpose(1, 2)),
                        ("k", k_rot.transpose(1, 2))):
            sites[site].append(x.numpy())
    return logits, {s: np.stack(xs) for s, xs in sites.items()}


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
    config = {"bos_token": "<s>", "eos_token": {"__type": "AddedToken", "content": "</s>", "special": True}, "pad_token": "<pad>",
              "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512}
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

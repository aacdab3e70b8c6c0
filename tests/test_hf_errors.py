"""Bad checkpoints and configs fail with an error that names the file, tensor or key at fault;
sharded checkpoints load the same params as single files."""
import json
import os
import shutil
import struct
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from hf_testlib import save, tiny_hf
from minimal_lm import CheckpointError, ConfigError, from_pretrained
from minimal_lm.hf_config import IgnoredConfigKeys, from_hf_config


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    model = tiny_hf("llama", num_hidden_layers=1)
    return {"single": save(model, root / "single"), "sharded": save(model, root / "sharded", max_shard_size="40KB")}


@pytest.fixture
def ckpt(base, tmp_path):
    """A fresh copy of the single-file checkpoint to damage."""
    return shutil.copytree(base["single"], tmp_path / "ckpt")


def edit_config(path, **changes):
    f = os.path.join(path, "config.json")
    c = json.load(open(f))
    c.update(changes)
    json.dump(c, open(f, "w"))


def edit_tensors(path, fn):
    f = os.path.join(path, "model.safetensors")
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f)


def test_sharded_loads_the_same_params(base):
    single, sharded = from_pretrained(base["single"]), from_pretrained(base["sharded"])
    assert len([n for n in os.listdir(base["sharded"]) if n.endswith(".safetensors")]) > 3
    assert single.config == sharded.config
    jax.tree.map(np.testing.assert_array_equal, single.params, sharded.params)


def test_truncated_safetensors(ckpt):
    f = os.path.join(ckpt, "model.safetensors")
    os.truncate(f, os.path.getsize(f) - 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor '.*'.*truncated"):
        from_pretrained(ckpt)


def test_corrupt_header(ckpt):
    f = os.path.join(ckpt, "model.safetensors")
    with open(f, "r+b") as fh:
        fh.write(struct.pack("<Q", 10**12))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: header length"):
        from_pretrained(ckpt)
    with open(f, "r+b") as fh:
        fh.write(struct.pack("<Q", 16) + b"{not json at all")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: header is not valid JSON"):
        from_pretrained(ckpt)


def test_missing_shard(base, tmp_path):
    path = shutil.copytree(base["sharded"], tmp_path / "sharded")
    shard = sorted(n for n in os.listdir(path) if n.startswith("model-0"))[1]
    os.remove(os.path.join(path, shard))
    with pytest.raises(CheckpointError, match=rf"index\.json: shard '{shard}' is listed but missing"):
        from_pretrained(path)


def test_index_pointing_at_the_wrong_shard(base, tmp_path):
    path = shutil.copytree(base["sharded"], tmp_path / "sharded")
    f = os.path.join(path, "model.safetensors.index.json")
    index = json.load(open(f))
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][name] = shards[1]
    json.dump(index, open(f, "w"))
    with pytest.raises(CheckpointError, match=rf"maps '{name}' to '{shards[1]}'"):
        from_pretrained(path)


def test_wrong_shape(ckpt):
    edit_tensors(ckpt, lambda t: t.update({"model.layers.0.mlp.up_proj.weight": np.zeros((95, 64), np.float32)}))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight' has shape \[95, 64\], "
                                              r"expected \[96, 64\]"):
        from_pretrained(ckpt)


def test_missing_tensor(ckpt):
    edit_tensors(ckpt, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) model\.norm\.weight"):
        from_pretrained(ckpt)


def test_extra_tensor(ckpt):
    edit_tensors(ckpt, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) model\.layers\.0\.self_attn\.o_proj\.bias"):
        from_pretrained(ckpt)


def test_tied_config_with_a_different_lm_head(ckpt):
    edit_config(ckpt, tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match="lm_head.weight differs"):
        from_pretrained(ckpt)


def test_bin_only_is_refused(ckpt):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    open(os.path.join(ckpt, "pytorch_model.bin"), "wb").write(b"\x80\x02not really a pickle")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*never unpickles.*save_pretrained"):
        from_pretrained(ckpt)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="got a file"):
        from_pretrained(tmp_path / "f.txt")
    with pytest.raises(CheckpointError, match="no such directory"):
        from_pretrained(tmp_path / "missing" / "dir")


def test_hub_id_offline(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="minimal-lm-tests/no-such-model: not a local directory.*Hub"):
        from_pretrained("minimal-lm-tests/no-such-model")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match="pip install huggingface_hub"):
        from_pretrained("minimal-lm-tests/no-such-model")


@pytest.fixture(scope="module")
def llama(base):
    """The config.json that transformers wrote for the base checkpoint."""
    return json.load(open(os.path.join(base["single"], "config.json")))


@pytest.mark.parametrize("changes, match", [
    (dict(architectures=["BertForMaskedLM"]), r"architectures=\['BertForMaskedLM'\] is not supported"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}),
     r"rope_parameters\.rope_type='yarn' is not supported"),
    (dict(rope_parameters=None, rope_scaling={"type": "dynamic", "factor": 2.0}),
     r"rope_scaling\.rope_type='dynamic' is not supported"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
     r"needs low_freq_factor, high_freq_factor, original_max_position_embeddings"),
    (dict(final_logit_softcapping=30.0), r"final_logit_softcapping=30\.0 is not supported \(this family has no"),
    (dict(hidden_act="gelu_fast"), r"hidden_act='gelu_fast' is not supported"),
    (dict(rope_interleaved=True), r"rope_interleaved=True is not supported \(only the rotate_half"),
    (dict(quantization_config={"quant_method": "gptq"}), r"quantization_config=.* is not supported"),
    (dict(pretraining_tp=2), r"pretraining_tp=2 is not supported"),
    (dict(sliding_window=64), r"sliding_window=64 is not supported \(this family has no sliding window"),
    (dict(partial_rotary_factor=0.5), r"partial_rotary_factor=0\.5"),
    (dict(num_attention_heads=3), r"num_heads=3 is not divisible by num_kv_heads=2|not divisible"),
])
def test_config_errors_name_the_key(llama, changes, match):
    with pytest.raises(ConfigError, match=match):
        from_hf_config({**llama, **changes})


def test_sliding_windows_map_per_layer(llama):
    """Windows become layer_windows where they bind, and nothing where they never do."""
    llama = {**llama, "num_hidden_layers": 2}
    mistral = {**llama, "architectures": ["MistralForCausalLM"], "model_type": "mistral"}
    assert from_hf_config({**mistral, "sliding_window": 64}).layer_windows == (64, 64)
    assert from_hf_config({**mistral, "sliding_window": 4096}).layer_windows is None
    assert from_hf_config({**mistral, "sliding_window": None}).layer_windows is None
    qwen = {**llama, "architectures": ["Qwen2ForCausalLM"], "sliding_window": 64, "max_window_layers": 1}
    assert from_hf_config({**qwen, "use_sliding_window": True}).layer_windows == (0, 64)
    assert from_hf_config({**qwen, "use_sliding_window": False}).layer_windows is None
    types = {**qwen, "use_sliding_window": True, "layer_types": ["sliding_attention", "full_attention"]}
    assert from_hf_config(types).layer_windows == (64, 0)
    with pytest.raises(ConfigError, match=r"layer_types has 1 entries, expected num_hidden_layers=2"):
        from_hf_config({**types, "layer_types": ["sliding_attention"]})
    with pytest.raises(ConfigError, match=r"layer_types 'chunked_attention' are not supported"):
        from_hf_config({**types, "layer_types": ["chunked_attention", "full_attention"]})


def test_unread_keys_warn_once_and_strict_refuses(llama):
    hf = {**llama, "is_llama_config": True, "transformers.js_config": {"dtype": "q4"}, "unk_token_id": 0}
    with pytest.warns(IgnoredConfigKeys) as caught:
        cfg = from_hf_config(hf, "m/config.json")
    assert cfg == from_hf_config(llama)
    assert len(caught) == 1 and "is_llama_config, transformers.js_config, unk_token_id" in str(caught[0].message)
    assert "m/config.json" in str(caught[0].message)
    with pytest.raises(ConfigError, match=r"m/config.json: key\(s\) .*is_llama_config.* strict mode refuses them"):
        from_hf_config(hf, "m/config.json", strict=True)

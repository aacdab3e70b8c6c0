"""What can be checked of the GPU code paths without a GPU: the GPU training config trains a few steps at a
tiny size with its bf16 compute, the train step donates its state, cuDNN attention is refused by name off a
GPU. (bench/run_gpu.sh and configs/study_gpu.py at full size have never run here: no GPU was lent.)"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm import ConfigError, ModelConfig, forward, init_params
from train.config import apply_overrides, load_config
from train.loop import run
from train.step import init_state, steps

TINY = ["model.d_model=64", "model.num_layers=2", "model.num_heads=2", "model.vocab_size=512",
        "model.max_seq_len=64", "train.seq_len=32", "train.batch_size=2", "train.steps=3", "train.warmup_steps=1",
        "train.eval_every=3", "train.eval_batches=1", "train.log_every=1", "train.checkpoint_every=3",
        "train.progress=false"]


def test_gpu_training_config_trains_at_tiny_size_with_its_dtypes(tmp_path):
    cfg = apply_overrides(load_config("configs/gpt2_124m.py"),
                          TINY + ["data.kind=stdlib", "data.path=", "data.vocab_size=512", "data.max_files=8",
                                  f"data.cache_dir={tmp_path / 'cache'}"])
    assert (cfg.model.dtype, cfg.model.param_dtype) == ("bfloat16", "float32")
    summary = run(cfg, tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3]
    assert all(np.isfinite(x["loss"]) for x in lines if "loss" in x) and np.isfinite(summary["eval_loss"])


def test_train_step_donates_the_state():
    cfg = apply_overrides(load_config("configs/gpt2_124m.py"), TINY + ["data.kind=synthetic", "data.path="])
    state = init_state(cfg.model, cfg.train)
    train_step, _ = steps(cfg.model, cfg.train)
    leaf = jax.tree.leaves(state.params)[0]
    tokens = np.random.RandomState(0).randint(0, 500, (2, 33)).astype(np.int32)
    new, metrics = train_step(state, tokens, 0)
    assert leaf.is_deleted(), "the old params' buffers are reused (donated), not copied"
    assert np.isfinite(float(metrics["loss"])) and jax.tree.leaves(new.params)[0].dtype == jnp.float32


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the refusal off a GPU")
def test_cudnn_attention_is_refused_by_name_off_a_gpu():
    cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=2, max_seq_len=32, attention_impl="cudnn")
    with pytest.raises(ConfigError, match="model.attention_impl='cudnn' needs a GPU"):
        forward(init_params(cfg, jax.random.key(0)), jnp.zeros((1, 8), jnp.int32), cfg)
    xla = cfg.replace(attention_impl="xla")
    out = forward(init_params(xla, jax.random.key(0)), jnp.zeros((1, 8), jnp.int32), xla)
    assert out.logits.shape == (1, 8, 64)

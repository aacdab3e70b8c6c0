"""Micro training runs shared by the training and reliability tests: the tiny RoPE config shrunk to seconds."""
from pathlib import Path

import jax
import jax.numpy as jnp

from train import load_config

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=64",
        "train.seq_len=48", "train.batch_size=8", "train.steps=40", "train.warmup_steps=4", "train.lr=1e-2",
        "train.eval_every=20", "train.checkpoint_every=10", "train.eval_batches=2", "train.progress=false"]


def tiny(*extra):
    return load_config(CONFIGS / "tiny_rope.py", TINY + list(extra))


def same_params(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))

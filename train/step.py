"""The one place that creates params and optimizer state and defines the jitted train/eval steps, so
that shardings over a (data, fsdp) mesh can later be added here and nowhere else."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from minimal_lm.config import ModelConfig
from minimal_lm.model import forward, init_params
from train.config import CONTROL_KEYS, TrainConfig


class TrainState(NamedTuple):
    params: dict
    opt_state: Any


def schedule(tc: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to lr, then cosine decay to lr * min_lr_ratio at tc.steps."""
    return optax.warmup_cosine_decay_schedule(0.0, tc.lr, tc.warmup_steps, tc.steps, tc.lr * tc.min_lr_ratio)


def _decay_mask(params):
    """Weight decay on matrices and embeddings; none on norm scales and biases."""
    def decay(path, _):
        name = str(getattr(path[-1], "key", path[-1]))
        return "norm" not in name and name not in ("bq", "bk", "bv")
    return jax.tree_util.tree_map_with_path(decay, params)


def optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                        mask=_decay_mask)
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw) if tc.grad_clip else adamw


def init_state(cfg: ModelConfig, tc: TrainConfig) -> TrainState:
    """Fresh params and optimizer state, committed to one device like restored checkpoints (so both
    hit the same compiled step)."""
    params = init_params(cfg, jax.random.key(tc.seed))
    return jax.device_put(TrainState(params, optimizer(tc).init(params)), jax.devices()[0])


def loss_fn(params, tokens_BT1, cfg: ModelConfig):
    """Mean next-token cross-entropy (nats) of a [B, T + 1] batch."""
    logits_BTV = forward(params, tokens_BT1[:, :-1], cfg).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT1[:, 1:]).mean()


def steps(cfg: ModelConfig, tc: TrainConfig) -> tuple[Callable, Callable]:
    """(train_step(state, tokens, step) -> (state, {loss, grad_norm, lr}),
    eval_loss(params, tokens) -> loss). The train step donates the state; metrics stay on device.
    Cached: runs that differ only in bookkeeping keys reuse the compiled functions."""
    return _steps(cfg, dataclasses.replace(tc, **{k.split(".")[1]: getattr(TrainConfig, k.split(".")[1])
                                                  for k in CONTROL_KEYS}))


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))


@functools.lru_cache(maxsize=16)
def _steps(cfg: ModelConfig, tc: TrainConfig):
    opt, lr = optimizer(tc), schedule(tc)

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state: TrainState, tokens_BT1, step):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, tokens_BT1, cfg)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state), {"loss": loss, "grad_norm": _norm(grads), "lr": lr(step)}

    @jax.jit
    def eval_loss(params, tokens_BT1):
        return loss_fn(params, tokens_BT1, cfg)

    return train_step, eval_loss

"""The one place that creates params and optimizer state and defines the jitted train/eval steps, with
their shardings over a (data, fsdp) mesh (one device: a 1 x 1 mesh)."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from minimal_lm.config import ConfigError, ModelConfig
from minimal_lm.model import forward, init_params
from minimal_lm.sharding import batch_sharding, make_mesh, state_shardings
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


def mesh_for(tc: TrainConfig) -> Mesh:
    """The (data, fsdp) mesh of train.mesh_data x train.mesh_fsdp devices (fsdp 0: all the rest)."""
    data = tc.mesh_data
    fsdp = tc.mesh_fsdp or max(1, jax.device_count() // data)
    if tc.batch_size % (data * fsdp):
        raise ConfigError(f"train.batch_size={tc.batch_size} does not split over the mesh's {data} x {fsdp} "
                          f"devices (train.mesh_data x train.mesh_fsdp); use a multiple of {data * fsdp}")
    try:
        return make_mesh((data, fsdp))
    except ValueError as e:
        raise ConfigError(f"train.mesh_data={data}, train.mesh_fsdp={tc.mesh_fsdp}: {e}") from None


def _fresh_state(cfg: ModelConfig, tc: TrainConfig) -> TrainState:
    params = init_params(cfg, jax.random.key(tc.seed))
    return TrainState(params, optimizer(tc).init(params))


def state_shardings_for(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh):
    return state_shardings(jax.eval_shape(lambda: _fresh_state(cfg, tc)), mesh)


def init_state(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh | None = None) -> TrainState:
    """Fresh params and optimizer state, created already split over the mesh (no full host copy), with
    the same shardings as restored checkpoints and the compiled step."""
    return _init_fn(cfg, tc, mesh or mesh_for(tc))()


@functools.lru_cache(maxsize=16)
def _init_fn(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh):
    return jax.jit(lambda: _fresh_state(cfg, tc), out_shardings=state_shardings_for(cfg, tc, mesh))


def loss_fn(params, tokens_BT1, cfg: ModelConfig):
    """Mean next-token cross-entropy (nats) of a [B, T + 1] batch."""
    logits_BTV = forward(params, tokens_BT1[:, :-1], cfg).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits_BTV, tokens_BT1[:, 1:]).mean()


def steps(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh | None = None) -> tuple[Callable, Callable]:
    """(train_step(state, tokens, step) -> (state, {loss, grad_norm, lr}),
    eval_loss(params, tokens) -> loss). The train step donates the state; metrics stay on device.
    State is split over the mesh's fsdp axis, batches over all devices.
    Cached: runs that differ only in bookkeeping keys reuse the compiled functions."""
    mesh = mesh or mesh_for(tc)
    return _steps(cfg, dataclasses.replace(tc, **{k.split(".")[1]: getattr(TrainConfig, k.split(".")[1])
                                                  for k in CONTROL_KEYS}), mesh)


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree.leaves(tree)))


@functools.lru_cache(maxsize=16)
def _steps(cfg: ModelConfig, tc: TrainConfig, mesh: Mesh):
    opt, lr = optimizer(tc), schedule(tc)
    state_sh, batch_sh = state_shardings_for(cfg, tc, mesh), batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())

    @functools.partial(jax.jit, donate_argnums=0, in_shardings=(state_sh, batch_sh, replicated),
                       out_shardings=(state_sh, replicated))
    def train_step(state: TrainState, tokens_BT1, step):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, tokens_BT1, cfg)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(params, opt_state), {"loss": loss, "grad_norm": _norm(grads), "lr": lr(step)}

    @functools.partial(jax.jit, in_shardings=(state_sh.params, batch_sh), out_shardings=replicated)
    def eval_loss(params, tokens_BT1):
        return loss_fn(params, tokens_BT1, cfg)

    def global_batch(tokens_BT1):
        """Every process computes the same global batch (a pure function of the step) and places only
        the rows its own devices hold: the same code on one host or many."""
        if isinstance(tokens_BT1, jax.Array):
            return tokens_BT1
        tokens_BT1 = np.asarray(tokens_BT1)
        return jax.make_array_from_callback(tokens_BT1.shape, batch_sh, lambda index: tokens_BT1[index])

    return _feeding(train_step, global_batch), _feeding(eval_loss, global_batch)


def _feeding(jitted, place):
    """`jitted` with its second argument (the batch) placed by `place`; `.lower` is the jitted one's."""
    def call(first, tokens_BT1, *rest):
        return jitted(first, place(tokens_BT1), *rest)

    call.lower = jitted.lower
    return call

"""Shardings over a (data, fsdp) device mesh: the same code on one CPU, one GPU or a pod.

Params and optimizer state are split along `fsdp` (each device keeps about 1/fsdp of them, gathered
per layer by XLA when used); batches are split over both axes. On one device every spec is trivial.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")


def make_mesh(shape: tuple[int, int] | None = None, devices=None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all, or the first data * fsdp of them).
    shape=None puts every device on fsdp."""
    if devices is None and shape is not None:
        devices = jax.devices()[: max(1, int(shape[0]) * int(shape[1]))]
    devices = list(jax.devices() if devices is None else devices)
    data, fsdp = (1, len(devices)) if shape is None else (int(shape[0]), int(shape[1]))
    if data * fsdp != len(devices) or data < 1 or fsdp < 1:
        raise ValueError(f"mesh shape ({data}, {fsdp}) needs {data * fsdp} devices, but {len(devices)} are "
                         f"available: choose data * fsdp = {len(devices)}")
    return Mesh(np.array(devices).reshape(data, fsdp), AXES)


def _spec(path, shape, fsdp: int) -> P:
    """Split the largest axis that fsdp divides; never the stacked layer axis, which the scan walks."""
    in_layers = any(getattr(k, "key", None) == "layers" for k in path)
    first = 1 if in_layers else 0
    candidates = [a for a in range(first, len(shape)) if shape[a] % fsdp == 0 and shape[a] >= fsdp]
    if fsdp == 1 or not candidates:
        return P()
    axis = max(candidates, key=lambda a: shape[a])
    return P(*[("fsdp" if a == axis else None) for a in range(len(shape))])


def state_shardings(tree, mesh: Mesh):
    """NamedShardings for params or anything shaped like them (optimizer moments follow their param's
    path, so they get the same split); scalars are replicated. Works on arrays or ShapeDtypeStructs."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree_util.tree_map_with_path(
        lambda path, a: NamedSharding(mesh, _spec(path, np.shape(a), fsdp)), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches [B, T] split over every device along B."""
    return NamedSharding(mesh, P(AXES))


def shard(tree, mesh: Mesh):
    """Place a pytree of arrays according to state_shardings."""
    return jax.device_put(tree, state_shardings(tree, mesh))

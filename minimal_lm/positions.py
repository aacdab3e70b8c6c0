"""Positional schemes behind one interface, chosen by name in `ModelConfig.position`.

A scheme may add embeddings to the input (`embed`), rotate q and k (`rotate`), or give an additive
attention bias (`bias`). Adding a scheme means one class here and one line in `SCHEMES`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from minimal_lm.config import ConfigError, Llama3Scaling, ModelConfig


class Position:
    """NoPE: the base scheme does nothing; causal masking is the only source of order."""

    name = "none"

    @staticmethod
    def init(cfg: ModelConfig, key) -> dict:
        return {}

    @staticmethod
    def embed(cfg: ModelConfig, params: dict, x_BSD, positions_BS):
        return x_BSD

    @staticmethod
    def rotary(cfg: ModelConfig, positions_BS):
        """What `rotate` needs of the positions, computed once per forward and shared by every layer
        (None: nothing rotates)."""
        return None

    @classmethod
    def rotate(cls, cfg: ModelConfig, x_BSHD, positions_BS, rotary=None):
        """x rotated by its positions; `rotary` is `cls.rotary(cfg, positions_BS)` when the caller has it."""
        return x_BSHD

    @staticmethod
    def bias(cfg: ModelConfig, q_positions_BT, k_positions_BS):
        return None

    @classmethod
    def to_hf(cls, cfg: ModelConfig) -> dict:
        raise ConfigError(f"position={cfg.position!r} has no Hugging Face Llama equivalent; only 'rope' exports")


class NoPE(Position):
    name = "none"


class Learned(Position):
    """Absolute position embeddings (GPT-2 style), added to the token embeddings; position p reads
    row p + position_offset (OPT keeps two rows in front)."""

    name = "learned"

    @staticmethod
    def init(cfg, key):
        shape = (cfg.max_seq_len + cfg.position_offset, cfg.d_model)
        return {"pos_embed": cfg.init_std * jax.random.normal(key, shape)}

    @staticmethod
    def embed(cfg, params, x_BSD, positions_BS):
        return x_BSD + params["pos_embed"].astype(x_BSD.dtype)[positions_BS + cfg.position_offset]


def rope_inv_freq(cfg: ModelConfig):
    """Inverse frequencies theta_i = base^(-2i/d) over the rotated dims, with optional llama3 scaling."""
    d = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rope_frequency_index(cfg: ModelConfig):
    """For each dim j of a head, its frequency index i (theta_i = base^(-2i/d)) in the rotate_half
    layout: i = j mod d/2 over the rotated dims; unrotated dims get -1."""
    d = cfg.rotary_dim
    idx = [j % (d // 2) for j in range(d)] + [-1] * (cfg.dim_per_head - d)
    return jnp.array(idx, dtype=jnp.int32)


def _rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


class Rope(Position):
    """Rotary embeddings in Hugging Face's "rotate_half" layout: dim j pairs with j + d/2."""

    name = "rope"

    @staticmethod
    def rotary(cfg, positions_BS):
        """(cos, sin) [B, S, 1, rotary_dim] in float32, as HF's rotary_emb computes them once per forward."""
        freqs_BSF = positions_BS.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
        angles_BSD = jnp.concatenate([freqs_BSF, freqs_BSF], axis=-1)[:, :, None, :]
        return jnp.cos(angles_BSD), jnp.sin(angles_BSD)

    @classmethod
    def rotate(cls, cfg, x_BSHD, positions_BS, rotary=None):
        d = cfg.rotary_dim
        if rotary is None:
            rotary = cls.rotary(cfg, positions_BS)
        cos, sin = (t.astype(x_BSHD.dtype) for t in rotary)
        rot, rest = x_BSHD[..., :d], x_BSHD[..., d:]
        rot = rot * cos + _rotate_half(rot) * sin
        return jnp.concatenate([rot, rest], axis=-1) if rest.shape[-1] else rot

    @classmethod
    def to_hf(cls, cfg):
        if cfg.rope_fraction != 1.0:
            raise ConfigError(f"rope_fraction={cfg.rope_fraction}: HF Llama rotates whole heads; only 1.0 exports")
        s = cfg.rope_scaling
        scaling = None if s is None else {
            "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings}
        params = {"rope_theta": cfg.rope_theta, **(scaling or {"rope_type": "default"})}
        return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling, "rope_parameters": params}


def alibi_slopes(num_heads: int):
    """Per-head slopes of Press et al. (2022), including head counts that are not a power of two."""

    def power_of_two(n):
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + alibi_slopes(2 * closest)[0::2][: num_heads - closest]


class Alibi(Position):
    """ALiBi: an additive bias -slope_h * (query position - key position) on the attention scores."""

    name = "alibi"

    @staticmethod
    def bias(cfg, q_positions_BT, k_positions_BS):
        slopes_H = jnp.array(alibi_slopes(cfg.num_heads), dtype=jnp.float32)
        distance_BTS = (q_positions_BT[:, :, None] - k_positions_BS[:, None, :]).astype(jnp.float32)
        return -slopes_H[None, :, None, None] * distance_BTS[:, None]


SCHEMES: dict[str, type[Position]] = {"rope": Rope, "none": NoPE, "learned": Learned, "alibi": Alibi}


def scheme(cfg: ModelConfig) -> type[Position]:
    return SCHEMES[cfg.position]


# Hugging Face config <-> scheme, levanter-style: one reader per HF rope_type, one writer per scheme.

_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
HF_ROPE_TYPES = {
    "default": ((), lambda p: {}),
    "llama3": (_LLAMA3_KEYS, lambda p: {"rope_scaling": Llama3Scaling(**{k: p[k] for k in _LLAMA3_KEYS})}),
}
"""HF rope_type -> (the rope parameter keys it needs, reader of those into ModelConfig fields)."""


def rope_from_hf(hf: dict, where: str = "config.json", partial: bool = False) -> dict:
    """ModelConfig fields (position, rope_theta, rope_scaling; rope_fraction when the family rotates
    part of each head) from an HF config's `rope_parameters` (transformers v5) or `rope_theta` +
    `rope_scaling` (v4). Unknown rope types or keys, and partial rotation elsewhere, raise."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: {key}={params!r}: expected a mapping")
    if any(isinstance(v, dict) for v in params.values()):
        raise ConfigError(f"{where}: {key} has per-layer-type rope settings ({', '.join(params)}); not supported")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in HF_ROPE_TYPES:
        raise ConfigError(f"{where}: {key}.rope_type={rope_type!r} is not supported; "
                          f"supported: {', '.join(HF_ROPE_TYPES)}")
    known, read = HF_ROPE_TYPES[rope_type]
    missing = [k for k in known if k not in params]
    if missing:
        raise ConfigError(f"{where}: {key} with rope_type {rope_type!r} needs {', '.join(missing)}")
    harmless = {"rope_type", "type", "rope_theta"}
    if params.get("attention_factor", 1.0) == 1.0:
        harmless.add("attention_factor")
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if fraction != 1.0 and not partial:
        raise ConfigError(f"{where}: partial_rotary_factor={fraction!r} is not supported for this family "
                          "(it rotates whole heads)")
    harmless.add("partial_rotary_factor")
    unknown = sorted(set(params) - harmless - set(known))
    if unknown:
        raise ConfigError(f"{where}: {key} key(s) {', '.join(unknown)} (rope_type {rope_type!r}) change the "
                          "rotation and are not supported")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    fields = {"position": "rope", "rope_theta": float(theta), **read(params)}
    return {**fields, "rope_fraction": float(fraction)} if partial else fields


def rope_to_hf(cfg: ModelConfig) -> dict:
    """The rope keys of an HF Llama config.json, in both the v5 (`rope_parameters`) and v4
    (`rope_theta`, `rope_scaling`) spellings so either version reads the same rotation."""
    return scheme(cfg).to_hf(cfg)


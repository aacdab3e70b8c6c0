"""Positional schemes behind one interface, chosen by name in `ModelConfig.position`.

A scheme may add embeddings to the input (`embed`), rotate q and k (`rotate`), or give an additive
attention bias (`bias`). Adding a scheme means one class here and one line in `SCHEMES`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from minimal_lm.config import ModelConfig


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
    def rotate(cfg: ModelConfig, x_BSHD, positions_BS):
        return x_BSHD

    @staticmethod
    def bias(cfg: ModelConfig, q_positions_BT, k_positions_BS):
        return None


class NoPE(Position):
    name = "none"


class Learned(Position):
    """Absolute position embeddings (GPT-2 style), added to the token embeddings."""

    name = "learned"

    @staticmethod
    def init(cfg, key):
        return {"pos_embed": cfg.init_std * jax.random.normal(key, (cfg.max_seq_len, cfg.d_model))}

    @staticmethod
    def embed(cfg, params, x_BSD, positions_BS):
        return x_BSD + params["pos_embed"].astype(x_BSD.dtype)[positions_BS]


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
    def rotate(cfg, x_BSHD, positions_BS):
        d = cfg.rotary_dim
        freqs_BSF = positions_BS.astype(jnp.float32)[..., None] * rope_inv_freq(cfg)
        angles_BSD = jnp.concatenate([freqs_BSF, freqs_BSF], axis=-1)[:, :, None, :]
        cos, sin = jnp.cos(angles_BSD).astype(x_BSHD.dtype), jnp.sin(angles_BSD).astype(x_BSHD.dtype)
        rot, rest = x_BSHD[..., :d], x_BSHD[..., d:]
        rot = rot * cos + _rotate_half(rot) * sin
        return jnp.concatenate([rot, rest], axis=-1) if rest.shape[-1] else rot


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

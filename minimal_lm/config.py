"""The model's one config: a frozen, validated dataclass that names the field at fault."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots")
NORMS = ("rms", "layer")
MLPS = ("glu", "mlp")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")


class ConfigError(ValueError):
    """A config value is wrong; the message names the field, the value and what was expected."""


@dataclass(frozen=True)
class Llama3Scaling:
    """Llama 3.1-style RoPE frequency scaling (HF rope_type "llama3")."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """A pre-norm decoder: by default Llama's (RMSNorm, SwiGLU MLP, GQA), with one of four positional
    schemes. The family fields after `tie_embeddings` reproduce GPT-2, OPT, GPT-Neo, GPT-NeoX, Gemma 2
    and Qwen3; each is read in one place of the forward."""

    vocab_size: int = 256
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: same as num_heads (no GQA)
    head_dim: int | None = None  # None: d_model // num_heads
    mlp_dim: int | None = None  # None: 4 * d_model * 2/3 rounded up to a multiple of 64
    max_seq_len: int = 256
    position: str = "rope"  # rope | none | learned | alibi
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # share of head_dim that is rotated (partial rotary)
    rope_scaling: Llama3Scaling | None = None
    qkv_bias: bool = False
    tie_embeddings: bool = True
    norm: str = "rms"  # rms | layer (LayerNorm with a bias)
    norm_offset: float = 0.0  # norms scale by (norm_offset + weight): Gemma stores w - 1
    mlp: str = "glu"  # glu: down(act(gate x) * up x) | mlp: down(act(up x))
    activation: str = "silu"  # silu | gelu | gelu_tanh | relu
    out_bias: bool = False  # bias on the attention output projection
    mlp_bias: bool = False
    parallel_residual: bool = False  # x + attn(norm1 x) + mlp(norm2 x) (GPT-NeoX)
    sandwich_norms: bool = False  # norms on the attention and MLP outputs too (Gemma 2)
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before rotation (Qwen3)
    embed_scale: float = 1.0  # token embeddings times this (Gemma: sqrt(d_model))
    attn_scale: float | None = None  # None: 1 / sqrt(head_dim)
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
    final_softcap: float | None = None
    layer_windows: tuple[int, ...] | None = None  # per layer: attend to the last w positions; 0 = all
    position_offset: int = 0  # learned position p reads row p + offset (OPT: 2)
    norm_eps: float = 1e-5
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype; params stay in param_dtype
    param_dtype: str = "float32"
    remat: str = "none"  # none | full | dots
    scan_layers: bool = True
    attention_impl: str | None = None  # None (auto: "chunked" on CPU) | "xla" | "cudnn" | "chunked"

    def __post_init__(self):
        if self.position is None:
            object.__setattr__(self, "position", "none")
        if isinstance(self.layer_windows, list):
            object.__setattr__(self, "layer_windows", tuple(self.layer_windows))
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", build_dataclass(Llama3Scaling, self.rope_scaling, "rope_scaling"))
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "max_seq_len"):
            _positive_int(name, getattr(self, name))
        for name in ("num_kv_heads", "head_dim", "mlp_dim"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        from minimal_lm.positions import SCHEMES

        if self.position not in SCHEMES:
            raise ConfigError(f"position={self.position!r}: expected one of {', '.join(SCHEMES)}")
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; set head_dim explicitly")
        if self.num_heads % self.kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.kv_heads}")
        if not 0.0 < self.rope_fraction <= 1.0:
            raise ConfigError(f"rope_fraction={self.rope_fraction}: expected 0 < rope_fraction <= 1")
        if self.position == "rope":
            if self.rotary_dim % 2:
                raise ConfigError(
                    f"head_dim={self.dim_per_head} with rope_fraction={self.rope_fraction} rotates "
                    f"{self.rotary_dim} dims: RoPE needs an even number (pairs of dims)")
            if not self.rope_theta > 0:
                raise ConfigError(f"rope_theta={self.rope_theta}: expected a positive number")
        for name, allowed in (("dtype", DTYPES), ("param_dtype", DTYPES), ("remat", REMAT)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.attention_impl not in (None, "xla", "cudnn", "chunked"):
            raise ConfigError(f"attention_impl={self.attention_impl!r}: expected None, 'xla', 'cudnn' or 'chunked'")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps={self.norm_eps}: expected a positive number")
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, (int, float)) or not self.init_std >= 0:
            raise ConfigError(f"init_std={self.init_std!r}: expected a number >= 0")
        for name in ("qkv_bias", "tie_embeddings", "scan_layers", "out_bias", "mlp_bias", "parallel_residual",
                     "sandwich_norms", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected true or false")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        for name in ("norm_offset", "embed_scale"):
            if not _is_number(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a number")
        for name in ("attn_scale", "attn_softcap", "final_softcap"):
            v = getattr(self, name)
            if v is not None and not (_is_number(v) and v > 0):
                raise ConfigError(f"{name}={v!r}: expected a positive number or null")
        w = self.layer_windows
        if w is not None:
            if (not isinstance(w, tuple) or len(w) != self.num_layers
                    or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in w)):
                raise ConfigError(f"layer_windows={w!r}: expected {self.num_layers} integers >= 0 (one per layer, "
                                  "0 = full attention) or null")
        offset = self.position_offset
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ConfigError(f"position_offset={self.position_offset!r}: expected an integer >= 0")

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim or -(-int(8 * self.d_model / 3) // 64) * 64

    @property
    def rotary_dim(self) -> int:
        return int(self.dim_per_head * self.rope_fraction)

    @property
    def windowed(self) -> bool:
        return self.layer_windows is not None and any(self.layer_windows)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model config") -> "ModelConfig":
        return build_dataclass(cls, d, where)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def build_dataclass(cls, d, where):
    """`cls(**d)` with a ConfigError that names `where`, the unknown keys and the valid ones."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    try:
        return cls(**d)
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name}={value!r}: expected a positive integer")


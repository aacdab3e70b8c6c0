"""minimal-lm: a small JAX decoder for studying massive values in attention queries and keys."""
from minimal_lm.config import ConfigError, Llama3Scaling, ModelConfig
from minimal_lm.generate import generate
from minimal_lm.hf import Pretrained, from_pretrained, load_hf, save_hf
from minimal_lm.hooks import CacheTooLarge, Fn, Patch, as_hook, cache_bytes, run_with_cache
from minimal_lm.model import SITES, KVCache, Output, count_params, forward, init_cache, init_params
from minimal_lm.positions import SCHEMES, alibi_slopes, rope_frequency_index, rope_inv_freq
from minimal_lm.safetensors_io import CheckpointError
from minimal_lm.tokenizer import Tokenizer

__all__ = ["ConfigError", "Llama3Scaling", "ModelConfig", "SITES", "KVCache", "Output", "count_params",
           "forward", "init_cache", "init_params", "SCHEMES", "alibi_slopes", "rope_frequency_index",
           "rope_inv_freq", "CheckpointError", "Pretrained", "Tokenizer", "from_pretrained", "generate",
           "load_hf", "save_hf", "CacheTooLarge", "Fn", "Patch", "as_hook", "cache_bytes", "run_with_cache"]

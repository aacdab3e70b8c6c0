"""The fused attention stays the default: a [T, S] score tensor appears in the compiled program only when a hook
names attn_scores or attn_probs. T = S = 44 (a size no other axis has) is searched for in the lowered StableHLO.

On GPU, jax.nn.dot_product_attention is cuDNN's fused kernel and the default program holds no 44x44 float
tensor at all. On CPU it is XLA's reference implementation, which forms its own scores, so there the test reads
each 44x44 tensor's source location and requires that every one comes from that call, none from the model's
explicit score path (minimal_lm.model.attention_probs), which a hook on attn_probs does bring in."""
import functools
import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm import ModelConfig, forward, init_params, model
from probes.sinks import FirstTokenMass

CFG = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64)
T = 44
_LOC = re.compile(r"^#loc(\d+) = (.*)$", re.M)


def score_tensor_lines(hook, mask_BT=None) -> tuple[int, set[tuple[str, int]]]:
    """(how many ops make a float [.., 44, 44] tensor, the model.py lines they are made on). An op inside a jnp
    helper lowered as its own function (jnp.where, jnp.tril) has no model.py frame: its call site is counted."""
    params = jax.eval_shape(lambda k: init_params(CFG, k), jax.random.key(0))
    tokens = jax.ShapeDtypeStruct((2, T), jnp.int32)
    text = jax.jit(lambda p, t, m: forward(p, t, CFG, mask_BT=m, capture=hook).logits).lower(
        params, tokens, mask_BT).as_text(debug_info=True)
    locs = dict(_LOC.findall(text))

    @functools.cache
    def frames(ref):
        """The source frames of a location, innermost first (a callsite reads callee at caller)."""
        out = []
        for f, n, inner in re.findall(r'"([^"]+)":(\d+):|#loc(\d+)', locs.get(ref, "")):
            out += frames(inner) if inner else [(f, int(n))]
        return out

    count, lines = 0, set()
    for op in text.splitlines():
        if re.search(rf"= .*tensor<(\d+x)*{T}x{T}x(f32|bf16|f16)>\s+loc", op):
            count += 1
            ref = re.search(r"loc\(#loc(\d+)\)\s*$", op).group(1)
            lines |= {n for f, n in frames(ref)[:1] if f.endswith("minimal_lm/model.py")}
    return count, lines


def _lines_of(fn) -> set[int]:
    src, start = inspect.getsourcelines(fn)
    return set(range(start, start + len(src)))


FUSED_CALL = {i + 1 for i, line in enumerate(inspect.getsource(model).splitlines())
              if "jax.nn.dot_product_attention(" in line}
EXPLICIT = _lines_of(model.attention_probs)


@pytest.mark.parametrize("padded", [False, True], ids=["causal", "left_padded"])
def test_default_program_has_no_score_tensor_of_its_own(padded):
    mask_BT = np.arange(T)[None] >= np.array([[0], [9]]) if padded else None
    count, lines = score_tensor_lines(None, mask_BT)
    if jax.default_backend() == "gpu":
        assert count == 0, f"{count} ops make a {T}x{T} float tensor in the default GPU program"
    assert lines <= FUSED_CALL, f"{T}x{T} tensors made on model.py lines {sorted(lines)}"

    count_h, lines_h = score_tensor_lines(FirstTokenMass(), mask_BT)
    assert count_h > count and lines_h & EXPLICIT, "a hook on attn_probs brings in the score path"

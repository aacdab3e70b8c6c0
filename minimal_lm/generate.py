"""Batched generation: left-padded prompts, a static-shape KV cache, one jit for prefill + decode loop.

The intervention hook can act on the prompt only ("prefill", the paper's scope: the cached prompt
keys are the ablated ones), on generated tokens only ("decode"), or on both ("all"): minimal_lm.hooks.SCOPES.
A hook whose edit of a new token depends on the sequence so far (a disruption's column statistics) has
`observer()` (a capture, before intervention, of this forward's statistics), `merge_history(h, new)` and
`with_history(h)`: the decode loop carries that history, so a cached step edits the new token as a full
forward of the sequence up to it would.
The hook is a traced argument of the one jitted program (a pytree, see minimal_lm.hooks): a new hook value
of the same structure (other dims, values, patches) reuses the compiled program.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from minimal_lm.batching import left_pad
from minimal_lm.config import ModelConfig
from minimal_lm.hooks import as_hook, check_scope
from minimal_lm.model import forward, init_cache


def generate(params, cfg: ModelConfig, prompts_tokens: list[list[int]], max_new_tokens: int, *, eos_ids=(),
             temperature: float = 0.0, top_k: int = 0, seed: int = 0, intervention=None,
             intervene_on: str = "all", stop=None, chunk: int = 32) -> list[list[int]]:
    """New tokens for each prompt, up to and including the first EOS (at most max_new_tokens).

    Greedy when temperature == 0, else sampling from softmax(logits / temperature), restricted to the
    top_k logits when top_k > 0. Prompts are left-padded to minimal_lm.batching's bucket length (a
    multiple of 32 tokens) so that nearby lengths share one compiled program; padding never changes the
    result (a hook that reduces over the sequence should define bind(mask_BT) to skip padded positions, as
    forward documents).
    The intervention is traced (a pytree hook, or a plain function wrapped by minimal_lm.hooks.as_hook and
    then compiled once per function object).
    `stop(tokens) -> bool`, a host-side test of one row's new tokens so far (a stop string in its text),
    ends that row early: decoding runs in chunks of `chunk` steps and checks the rows still going after
    each, so a row may run on up to chunk - 1 tokens past its stop (cut them with the same test). The
    tokens produced before a stop are those of a run without one.
    """
    check_scope(intervene_on, "intervene_on")
    if not prompts_tokens or any(len(p) == 0 for p in prompts_tokens):
        raise ValueError("prompts_tokens: expected a non-empty list of non-empty token lists")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens}: expected at least 1")
    if temperature < 0 or top_k < 0:
        raise ValueError(f"temperature={temperature}, top_k={top_k}: expected non-negative values")
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: expected at least 1")
    longest = max(len(p) for p in prompts_tokens)
    if longest + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} exceeds "
                         f"max_seq_len={cfg.max_seq_len}")
    bad = [t for p in prompts_tokens for t in p if not 0 <= t < cfg.vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {cfg.vocab_size})")
    tokens_BP, mask_BP = left_pad(prompts_tokens)
    hook = as_hook(intervention)
    eos_E = jnp.array([int(e) for e in eos_ids] or [-1], jnp.int32)
    static = dict(cfg=cfg, max_new_tokens=max_new_tokens, intervene_on=intervene_on if hook is not None else "all")
    state = _prefill(params, jnp.asarray(tokens_BP), jnp.asarray(mask_BP), jax.random.key(seed), eos_E,
                     jnp.float32(temperature), jnp.int32(top_k), hook, **static)
    end = max_new_tokens if stop is None else 1
    while True:
        end = min(end + (chunk if stop is not None else 0), max_new_tokens)
        state = _decode(params, state, jnp.int32(end), eos_E, jnp.float32(temperature), jnp.int32(top_k), hook,
                        **static)
        step, done_B = int(state[0]), np.asarray(state[4])
        if step >= max_new_tokens or done_B.all():
            break
        out_BN, len_B = np.asarray(state[5]), np.asarray(state[6])
        stopped = [b for b in range(len(prompts_tokens)) if not done_B[b] and stop(out_BN[b, :len_B[b]].tolist())]
        if stopped:
            state = state[:4] + (state[4].at[np.array(stopped)].set(True),) + state[5:]
            if len(stopped) + done_B.sum() == len(prompts_tokens):
                break
    out_BN, lengths_B = np.asarray(state[5]), np.asarray(state[6])
    return [out_BN[b, :lengths_B[b]].tolist() for b in range(len(prompts_tokens))]


_STATIC = ("cfg", "max_new_tokens", "intervene_on")


def _hooks(hook, intervene_on):
    prefill_iv = hook if intervene_on in ("all", "prefill") else None
    decode_iv = hook if intervene_on in ("all", "decode") else None
    return prefill_iv, decode_iv, decode_iv.observer() if hasattr(decode_iv, "observer") else None


@functools.partial(jax.jit, static_argnames=_STATIC)
def _prefill(params, tokens_BP, mask_BP, key, eos_E, temperature, top_k, hook, *, cfg, max_new_tokens, intervene_on):
    """The decode state after the prompt and the first new token."""
    prefill_iv, _, observe = _hooks(hook, intervene_on)
    B, P = tokens_BP.shape
    cache = init_cache(cfg, B, P + max_new_tokens)
    out = forward(params, tokens_BP, cfg, mask_BT=mask_BP, cache=cache, intervention=prefill_iv, capture=observe,
                  last_only=True)
    key, sub = jax.random.split(key)
    tok_B = _sample(out.logits[:, -1], sub, temperature, top_k)
    out_BN = jnp.zeros((B, max_new_tokens), jnp.int32).at[:, 0].set(tok_B)
    done_B = jnp.isin(tok_B, eos_E)
    pos_B = mask_BP.sum(axis=1).astype(jnp.int32)
    history = out.captured if observe is not None else None
    return jnp.int32(1), out.cache, tok_B, pos_B, done_B, out_BN, jnp.ones((B,), jnp.int32), key, history


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnums=(1,))
def _decode(params, state, end, eos_E, temperature, top_k, hook, *, cfg, max_new_tokens, intervene_on):
    """Decode steps until step `end` (traced: one program for every chunk) or every row is done."""
    _, decode_iv, observe = _hooks(hook, intervene_on)

    def cond(state):
        step, _, _, _, done_B, _, _, _, _ = state
        return (step < end) & ~jnp.all(done_B)

    def body(state):
        step, cache, tok_B, pos_B, done_B, out_BN, len_B, key, history = state
        iv = decode_iv if observe is None else decode_iv.with_history(history)
        o = forward(params, tok_B[:, None], cfg, positions_BT=pos_B[:, None], cache=cache, intervention=iv,
                    capture=observe, last_only=True)
        if observe is not None:
            history = decode_iv.merge_history(history, o.captured)
        key, sub = jax.random.split(key)
        nxt_B = _sample(o.logits[:, -1], sub, temperature, top_k)
        out_BN = jax.lax.dynamic_update_slice(out_BN, nxt_B[:, None], (0, step))
        len_B = len_B + (~done_B).astype(jnp.int32)
        return step + 1, o.cache, nxt_B, pos_B + 1, done_B | jnp.isin(nxt_B, eos_E), out_BN, len_B, key, history

    return jax.lax.while_loop(cond, body, state)


def _sample(logits_BV, key, temperature, top_k):
    """Argmax when temperature == 0; else a draw from softmax(logits / temperature) over the top_k
    logits (all of them when top_k == 0). Both are traced values: one program serves every setting."""

    def draw(logits_BV):
        logits_BV = logits_BV / temperature

        def keep_top_k(logits_BV):
            k = jnp.clip(top_k, 1, logits_BV.shape[-1])
            kth_B1 = jnp.take(jnp.sort(logits_BV, axis=-1), logits_BV.shape[-1] - k, axis=-1)[:, None]
            return jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)

        logits_BV = jax.lax.cond(top_k > 0, keep_top_k, lambda x: x, logits_BV)
        return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, draw, lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32), logits_BV)

"""The training loop: resume or start, step, log one step late (no host sync inside the step),
evaluate, checkpoint, stop on a non-finite loss (or skip that batch, with train.skip_nonfinite)."""
from __future__ import annotations

import functools
import time
import warnings
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from minimal_lm.config import ConfigError
from minimal_lm.files import read_log
from minimal_lm.safetensors_io import CheckpointError
from minimal_lm.sharding import batch_sharding
from train import checkpoint
from train.config import RunConfig
from train.data import make_source
from train.step import init_state, mesh_for, steps

Hook = Callable[[int, dict], "dict | None"]
"""Called at each evaluation with (step, params); a returned dict is added to that metrics line."""


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss or gradient."""


def run(cfg: RunConfig, out: str | Path, hooks: tuple[Hook, ...] = ()) -> dict:
    """Train `cfg` into run directory `out` (resuming from its latest checkpoint), holding its writer
    lock (checkpoint.RunDirBusy if another process holds it); returns the last metrics line that has an
    eval_loss, plus "run_dir" and "step". With several processes (jax.distributed) every process calls
    this with the same arguments; process 0 alone writes config, tokenizer, metrics and the lock."""
    out, tc = Path(out), cfg.train
    source = make_source(cfg.data)
    if source.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocabulary "
                          f"({source.vocab_size} tokens); raise model.vocab_size")
    source.check(tc.seq_len + 1, cfg.model.vocab_size)
    with checkpoint.hold(out):
        return _run(cfg, out, source, hooks)


def _open(out: Path, cfg: RunConfig, source) -> None:
    checkpoint.open_run_dir(out, cfg)
    source.save_tokenizer(out)


def _run(cfg: RunConfig, out: Path, source, hooks: tuple[Hook, ...]) -> dict:
    tc, writer = cfg.train, checkpoint.is_writer()
    checkpoint.on_process_0(_open, out, cfg, source)
    if not checkpoint.steps_in(out) and read_metrics(out):
        raise CheckpointError(f"{out}: metrics.jsonl reaches step {read_metrics(out)[-1].get('step')} but no "
                              f"checkpoint is left in {out / 'checkpoints'}; not starting over silently: pass "
                              f"train.overwrite=true to start over")
    start, state = checkpoint.resume(out, init_state(cfg.model, tc))
    mngr = checkpoint.manager(out, cfg)
    if not start:
        checkpoint.save(mngr, 0, state)
        mngr.wait_until_finished()  # no metrics line before a checkpoint exists
    # a killed run may have logged further
    checkpoint.on_process_0(checkpoint.truncate_log, out / "metrics.jsonl", start)
    stop = min(tc.stop_after or tc.steps, tc.steps)
    train_step, eval_loss = steps(cfg.model, tc)
    if tc.skip_nonfinite:
        train_step = _skipping(train_step, batch_sharding(mesh_for(tc)))
    eval_batches = [source.eval_batch(i, tc.batch_size, tc.seq_len) for i in range(tc.eval_batches)]
    log = _Log(out / "metrics.jsonl", tc.batch_size * tc.seq_len, tc.log_every, tc.skip_nonfinite, write=writer)
    bar = tqdm(total=stop, initial=start, unit="step", desc=out.name,
               disable=not tc.progress or start >= stop or not writer)
    pending = None
    try:
        for step in range(start, stop):
            state, metrics = train_step(state, source.batch(step, tc.batch_size, tc.seq_len), step)
            if pending:
                log.record(*pending, bar)
            pending, done = (step + 1, metrics), step + 1
            evaluate = done == stop or (tc.eval_every and done % tc.eval_every == 0)
            save = done == stop or done % tc.checkpoint_every == 0
            if evaluate or save:
                extra = {}
                log.check(*pending)
                if evaluate:
                    extra["eval_loss"] = float(np.mean([eval_loss(state.params, b) for b in eval_batches]))
                    for hook in hooks:
                        extra.update(hook(done, state.params) or {})
                log.record(*pending, bar, extra)
                pending = None
                if save:
                    checkpoint.save(mngr, done, state)
    except NonFiniteLoss as e:
        mngr.wait_until_finished()
        raise NonFiniteLoss(f"{e}; stopped, last good checkpoint: step {mngr.latest_step()} in "
                            f"{out / 'checkpoints'}") from None
    finally:
        bar.close()
        mngr.wait_until_finished()
        mngr.close()
    checkpoint.sync("train.loop.run: metrics written")  # the others read process 0's metrics.jsonl
    return summary(out)


@functools.lru_cache(maxsize=16)
def _skipping(train_step, batch_sh):
    """`train_step` that returns its input state unchanged where the loss or gradient is not finite,
    decided on device (no host sync); its metrics gain "skipped". Batches are placed as global arrays
    first, as train.step does, so this also runs on many hosts."""
    @functools.partial(jax.jit, donate_argnums=0)
    def guarded(state, tokens_BT1, i):
        new, metrics = train_step(state, tokens_BT1, i)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, state), {**metrics, "skipped": ~ok}

    def step(state, tokens_BT1, i):
        tokens_BT1 = np.asarray(tokens_BT1)
        return guarded(state, jax.make_array_from_callback(tokens_BT1.shape, batch_sh, lambda j: tokens_BT1[j]), i)
    return step


class _Log:
    """Fetches each step's metrics one step late and appends lines to metrics.jsonl (if `write`); a non-finite step
    raises NonFiniteLoss, unless it was skipped and fewer than `skip + 1` came in a row."""

    def __init__(self, path: Path, tokens_per_step: int, every: int, skip: int = 0, write: bool = True):
        self.path, self.tokens_per_step, self.every, self.skip = path, tokens_per_step, every, skip
        self.write = write  # False on processes other than 0 of a multi-process run: they check, not log
        self.losses: list[float] = []
        self.skipped, self.in_a_row, self.checked = 0, 0, None
        self.last_time, self.last_step = time.perf_counter(), None

    def check(self, step, metrics):
        if self.checked and self.checked[0] == step:
            return self.checked[1]
        m = jax.device_get(metrics)
        self.in_a_row = 0 if np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) else self.in_a_row + 1
        if self.in_a_row and not (m.get("skipped") and self.in_a_row <= self.skip):
            hint = (f"{self.in_a_row} in a row, more than train.skip_nonfinite={self.skip}" if self.skip else
                    "train.skip_nonfinite=N skips up to N such batches in a row")
            raise NonFiniteLoss(f"non-finite loss or gradient at step {step}: loss {m['loss']}, "
                                f"grad norm {m['grad_norm']} ({hint})")
        if self.in_a_row:
            warnings.warn(f"non-finite loss or gradient at step {step} (loss {m['loss']}): batch skipped, params "
                          f"and optimizer state unchanged ({self.in_a_row} in a row, at most {self.skip})")
        self.checked = (step, m)
        return m

    def record(self, step, metrics, bar, extra=None):
        m = self.check(step, metrics)
        if m.get("skipped"):
            self.skipped += 1
        else:
            self.losses.append(float(m["loss"]))
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}", **({"eval": f"{extra['eval_loss']:.3f}"} if extra else {}))
        if step % self.every and not extra:
            return
        now = time.perf_counter()
        n = step - self.last_step if self.last_step is not None else len(self.losses) + self.skipped
        line = {"step": step, "loss": float(np.mean(self.losses)) if self.losses else float("nan"),
                "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                "tokens_per_s": n * self.tokens_per_step / (now - self.last_time),
                **({"skipped": self.skipped} if self.skipped else {}), **(extra or {})}
        if self.write:
            checkpoint.append_log(self.path, line)
        self.losses, self.skipped, self.last_time, self.last_step = [], 0, now, step


def read_metrics(out: str | Path) -> list[dict]:
    """The lines of out/metrics.jsonl; a cut-off last line (from a killed run) is skipped."""
    return read_log(Path(out) / "metrics.jsonl")


def summary(out: str | Path) -> dict:
    lines = read_metrics(out)
    evals = [m for m in lines if "eval_loss" in m]
    return {**(evals[-1] if evals else {}), "run_dir": str(out), "step": lines[-1]["step"] if lines else 0}

"""NaN losses provoked for real: the train step's params are poisoned with NaN on chosen batches (inside
the compiled step). Without train.skip_nonfinite the run stops naming the step and keeps the last good
checkpoint; with it, those batches leave params and optimizer state exactly unchanged."""
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm.run_dir import checkpoint_steps, load_run
from train import NonFiniteLoss, load_config, loop, read_metrics, run
from train.checkpoint import checkpoint_manager, restore
from train.data import make_source
from train.step import init_state, steps

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=64",
        "train.seq_len=48", "train.batch_size=8", "train.steps=14", "train.warmup_steps=2", "train.lr=1e-2",
        "train.eval_every=0", "train.checkpoint_every=5", "train.eval_batches=1", "train.progress=false"]
BAD = (7, 10, 11)  # batch indices; batch i produces step i + 1


def same(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def tiny(*extra):
    return load_config(CONFIGS / "tiny_rope.py", TINY + list(extra))


@pytest.fixture(scope="module")
def poisoned():
    """train.loop.steps replaced by one whose train step turns every param into NaN on the BAD batches
    (jnp ops, so it also works traced inside the skipping step)."""
    train_step, eval_loss = steps(tiny().model, tiny().train)

    def step(state, tokens_BT1, i):
        bad = jnp.isin(i, jnp.array(BAD))
        nan = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
        return train_step(state._replace(params=nan), tokens_BT1, i)

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "steps", lambda *a, **k: (step, eval_loss))
    yield train_step
    mp.undo()


def state_at(out, step):
    """The training state saved in run directory `out` at `step`."""
    like = jax.eval_shape(lambda: init_state(tiny().model, tiny().train))
    with checkpoint_manager(out) as mngr:
        return restore(mngr, step, like)


def reference(train_step, out, n, skip=()):
    """The state after n batches from the run's step-0 checkpoint, the `skip` batches left out, with the
    real step."""
    cfg = tiny()
    source, tc = make_source(cfg.data), cfg.train
    state = state_at(out, 0)
    for i in range(n):
        if i not in skip:
            state, _ = train_step(state, source.batch(i, tc.batch_size, tc.seq_len), i)
    return state


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(poisoned, tmp_path):
    with pytest.raises(NonFiniteLoss) as e:
        run(tiny(), tmp_path)
    msg = str(e.value)
    assert re.search(r"non-finite loss or gradient at step 8: loss nan.*train\.skip_nonfinite=N skips.*"
                     r"last good checkpoint: step 5 in .*checkpoints", msg), msg
    assert checkpoint_steps(tmp_path) == [0, 5]
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6, 7]
    assert same(load_run(tmp_path)[1], reference(poisoned, tmp_path, 5).params)


def test_skipped_batches_leave_params_and_optimizer_state_unchanged(poisoned, tmp_path):
    with pytest.warns(UserWarning) as warned:
        run(tiny("train.skip_nonfinite=2"), tmp_path)
    skips = [re.search(r"at step (\d+) \(loss nan\): batch skipped, params and optimizer state unchanged "
                       r"\((\d) in a row, at most 2\)", str(w.message)) for w in warned]
    assert [tuple(map(int, m.groups())) for m in skips if m] == [(8, 1), (11, 1), (12, 2)]
    lines = read_metrics(tmp_path)
    assert [m["step"] for m in lines] == list(range(1, 15))
    assert [m["step"] for m in lines if m.get("skipped")] == [8, 11, 12]
    assert all(np.isnan(m["loss"]) == bool(m.get("skipped")) for m in lines)
    want, got = reference(poisoned, tmp_path, 14, skip=BAD), state_at(tmp_path, 14)
    assert same(want.params, got.params) and same(want.opt_state, got.opt_state)


def test_too_many_in_a_row_stops(poisoned, tmp_path):
    with pytest.raises(NonFiniteLoss, match=r"at step 12: .*2 in a row, more than train\.skip_nonfinite=1.*"
                                            r"last good checkpoint: step 10"):
        with pytest.warns(UserWarning, match="batch skipped"):
            run(tiny("train.skip_nonfinite=1"), tmp_path)
    assert same(load_run(tmp_path)[1], reference(poisoned, tmp_path, 10, skip=BAD[:1]).params)

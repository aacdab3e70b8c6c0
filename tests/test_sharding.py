"""Sharding rules over a (data, fsdp) mesh, on 8 simulated CPU devices (run in a subprocess)."""
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from minimal_lm.sharding import make_mesh


def run_on_8_devices(code: str):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_params_split_along_fsdp_and_forward_matches_one_device():
    out = run_on_8_devices("""
        import jax, jax.numpy as jnp, numpy as np
        from minimal_lm import ModelConfig, init_params, forward
        from minimal_lm.sharding import make_mesh, shard, batch_sharding
        assert len(jax.devices()) == 8
        cfg = ModelConfig(vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64)
        params = init_params(cfg, jax.random.key(0))
        tokens = jax.random.randint(jax.random.key(1), (8, 16), 0, 64)
        ref = forward(params, tokens, cfg).logits
        mesh = make_mesh((2, 4))
        sharded = shard(params, mesh)
        total = sum(a.size for a in jax.tree.leaves(params))
        on_dev0 = sum(s.data.size for a in jax.tree.leaves(sharded) for s in a.addressable_shards
                      if s.device == jax.devices()[0])
        print("fraction", on_dev0 / total)
        assert sharded["layers"]["wq"].sharding.spec[0] is None, "never split the layer axis"
        got = jax.jit(lambda p, t: forward(p, t, cfg).logits)(sharded, jax.device_put(tokens, batch_sharding(mesh)))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    fraction = float(out.split("fraction")[1].split()[0])
    assert fraction < 0.3, f"device 0 holds {fraction:.2f} of the params, expected about 1/4"
    assert "ok" in out


def test_mesh_shape_must_match_device_count():
    with pytest.raises(ValueError, match=r"mesh shape \(2, 4\) needs 8 devices"):
        make_mesh((2, 4), devices=jax.devices()[:1])
    assert make_mesh().shape == {"data": 1, "fsdp": len(jax.devices())}


TRAIN_ON_MESHES = """
    import json, sys
    import jax, numpy as np
    from minimal_lm import ModelConfig
    from minimal_lm.run_dir import load_run
    from train.config import DataConfig, RunConfig, TrainConfig, apply_overrides
    from train.loop import read_metrics, run
    from train.step import init_state

    out = sys.argv[1]
    base = RunConfig(
        model=ModelConfig(vocab_size=264, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128,
                          max_seq_len=64),
        train=TrainConfig(steps=5, batch_size=8, seq_len=32, warmup_steps=1, eval_every=0, eval_batches=1,
                          checkpoint_every=3, progress=False),
        data=DataConfig(kind="synthetic"))

    def on(mesh, **kw):
        return apply_overrides(base, [f"train.mesh_data={mesh[0]}", f"train.mesh_fsdp={mesh[1]}"]
                               + [f"train.{k}={v}" for k, v in kw.items()])

    state = init_state(base.model, on((2, 4)).train)
    wq = state.params["layers"]["wq"]
    total = sum(a.size for a in jax.tree.leaves(state.params))
    dev0 = sum(s.data.size for a in jax.tree.leaves(state.params) for s in a.addressable_shards
               if s.device == jax.devices()[0])
    print("fraction", dev0 / total, "wq", wq.sharding.spec)

    run(on((1, 1)), out + "/one")
    run(on((2, 4)), out + "/mesh")
    run(on((2, 4), stop_after=3), out + "/moved")
    run(on((8, 1)), out + "/moved")
    losses = {name: [m["loss"] for m in read_metrics(out + "/" + name)] for name in ("one", "mesh", "moved")}
    params = {name: load_run(out + "/" + name)[1] for name in ("one", "mesh", "moved")}
    cfg3, p3, _ = load_run(out + "/mesh", step=3)
    print(json.dumps({"losses": losses, "n": len(losses["one"]),
                      "params_diff": {n: max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                             for a, b in zip(jax.tree.leaves(params["one"]),
                                                             jax.tree.leaves(params[n])))
                                      for n in ("mesh", "moved")},
                      "restored_on_one_device": len(jax.tree.leaves(p3)[0].devices())}))
"""


def test_sharded_training_matches_one_device_and_checkpoints_move_between_meshes(tmp_path):
    """Mesh (2, 4) trains like one device; a checkpoint saved on (2, 4) resumes on (8, 1) and loads on one."""
    script = tmp_path / "train_on_meshes.py"
    script.write_text(textwrap.dedent(TRAIN_ON_MESHES))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    fraction = float(lines[0].split()[1])
    assert fraction < 0.35, f"device 0 holds {fraction:.2f} of the params on fsdp=4, expected about 1/4"
    assert "fsdp" in lines[0] and "None, " in lines[0]
    got = __import__("json").loads(lines[-1])
    assert got["n"] == 5
    one = got["losses"]["one"]
    for name in ("mesh", "moved"):
        for a, b in zip(one, got["losses"][name]):
            assert abs(a - b) <= 1e-5 * abs(a), (name, one, got["losses"][name])
        assert got["params_diff"][name] < 1e-4
    assert got["restored_on_one_device"] == 1

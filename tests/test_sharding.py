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

"""Positional schemes: RoPE relative invariance and layout, ALiBi slopes and bias, config validation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minimal_lm import ConfigError, Llama3Scaling, ModelConfig, alibi_slopes, rope_frequency_index, rope_inv_freq
from minimal_lm.positions import SCHEMES, Alibi, Rope


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_rope_scores_depend_only_on_relative_position(fraction):
    cfg = ModelConfig(d_model=64, num_heads=4, position="rope", rope_fraction=fraction)
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, 16))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, 16))

    def score(m, n):
        qm = Rope.rotate(cfg, q, jnp.array([[m]]))
        kn = Rope.rotate(cfg, k, jnp.array([[n]]))
        return float(jnp.sum(qm * kn))

    for shift in (1, 7, 100):
        assert score(3, 1) == pytest.approx(score(3 + shift, 1 + shift), rel=1e-5, abs=1e-5)
    assert score(3, 1) != pytest.approx(score(5, 1), rel=1e-3)
    if fraction < 1:
        rotated = Rope.rotate(cfg, q, jnp.array([[5]]))
        np.testing.assert_array_equal(rotated[..., 8:], q[..., 8:])


def test_rope_is_rotate_half_layout():
    """Dim j pairs with j + d/2 at frequency theta_j: a 2D rotation of (x_j, x_{j+d/2})."""
    cfg = ModelConfig(d_model=32, num_heads=4, position="rope", rope_theta=100.0)
    x = jax.random.normal(jax.random.key(2), (1, 1, 1, 8))
    pos = 3
    got = np.asarray(Rope.rotate(cfg, x, jnp.array([[pos]])))[0, 0, 0]
    x = np.asarray(x)[0, 0, 0]
    for j in range(4):
        a = pos * 100.0 ** (-2 * j / 8)
        assert got[j] == pytest.approx(x[j] * math.cos(a) - x[j + 4] * math.sin(a), abs=1e-5)
        assert got[j + 4] == pytest.approx(x[j + 4] * math.cos(a) + x[j] * math.sin(a), abs=1e-5)
    np.testing.assert_array_equal(rope_frequency_index(cfg), [0, 1, 2, 3, 0, 1, 2, 3])


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_forward_constant_rotation_tables_match_traced_positions(fraction):
    """Without positions or a mask forward rotates by tables computed at trace time (constants); given the same
    positions it computes them in-graph. The two agree, loss gradients included."""
    from minimal_lm import forward, init_params

    cfg = ModelConfig(d_model=32, num_heads=4, num_layers=2, mlp_dim=64, vocab_size=50, max_seq_len=32,
                      position="rope", rope_fraction=fraction, init_std=0.5)
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 50)

    def loss(p, positions):
        return jnp.mean(forward(p, tokens, cfg, positions_BT=positions).logits ** 2)

    grad = jax.jit(jax.value_and_grad(loss))
    (a, ga), (b, gb) = grad(params, None), grad(params, jnp.broadcast_to(jnp.arange(12), (2, 12)))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), ga, gb)
    logits = [forward(params, tokens, cfg, positions_BT=p).logits
              for p in (None, jnp.broadcast_to(2 * jnp.arange(12), (2, 12)))]
    assert float(jnp.max(jnp.abs(logits[0] - logits[1]))) > 1e-3  # the positions do reach the rotation


def test_llama3_scaling_matches_reference_rule():
    s = Llama3Scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
    cfg = ModelConfig(d_model=256, num_heads=4, position="rope", rope_theta=500000.0, rope_scaling=s)
    base = np.asarray(rope_inv_freq(cfg.replace(rope_scaling=None)))
    got = np.asarray(rope_inv_freq(cfg))
    for b, g in zip(base, got):
        wavelen = 2 * math.pi / b
        if wavelen < 64 / 4:
            assert g == pytest.approx(b)
        elif wavelen > 64 / 1:
            assert g == pytest.approx(b / 8)
        else:
            smooth = (64 / wavelen - 1) / 3
            assert g == pytest.approx((1 - smooth) * b / 8 + smooth * b, rel=1e-5)


def test_alibi_slopes_of_press_et_al():
    assert alibi_slopes(8) == pytest.approx([2.0 ** -(i + 1) for i in range(8)])
    assert alibi_slopes(4) == pytest.approx([0.25, 0.0625, 0.015625, 0.00390625])
    # Not a power of two: the 4 slopes of 4 heads, then every other slope of 8 heads.
    assert alibi_slopes(6) == pytest.approx([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125])
    assert len(alibi_slopes(12)) == 12 and len(set(alibi_slopes(12))) == 12


def test_alibi_bias_shape_and_values():
    cfg = ModelConfig(d_model=32, num_heads=4, position="alibi")
    pos = jnp.arange(5)[None].repeat(2, 0)
    bias = np.asarray(Alibi.bias(cfg, pos, pos))
    assert bias.shape == (2, 4, 5, 5)
    slopes = alibi_slopes(4)
    for h in range(4):
        assert bias[1, h, 4, 1] == pytest.approx(-slopes[h] * 3)
        assert bias[0, h, 2, 2] == 0.0


def test_registry_names_every_scheme():
    assert set(SCHEMES) == {"rope", "none", "learned", "alibi"}
    assert all(SCHEMES[name].name == name for name in SCHEMES)


@pytest.mark.parametrize("kwargs, field", [
    (dict(d_model=36, num_heads=4, position="rope"), "head_dim=9"),
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads=3"),
    (dict(position="sinusoidal"), "position='sinusoidal'"),
    (dict(d_model=30, num_heads=4), "d_model=30"),
    (dict(dtype="float64"), "dtype='float64'"),
    (dict(num_layers=0), "num_layers=0"),
    (dict(rope_fraction=0.0), "rope_fraction=0.0"),
    (dict(vocab_size=3.5), "vocab_size=3.5"),
])
def test_bad_configs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        ModelConfig(**kwargs)


def test_odd_head_dim_is_fine_without_rope_and_config_round_trips():
    cfg = ModelConfig(d_model=36, num_heads=4, position="none")
    assert cfg.dim_per_head == 9
    cfg = ModelConfig(position="rope", rope_scaling={"factor": 4.0})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig(position=None).position == "none"
    with pytest.raises(ConfigError, match="unknown key.*heads.*valid keys"):
        ModelConfig.from_dict({"heads": 4})

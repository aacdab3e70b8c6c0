"""Fuzzed model files: random and mutated config.json values (Hugging Face and run directories) and
safetensors headers. The loaders either load or raise our own error (ConfigError, CheckpointError)
naming the file; never an exception from deep inside json, numpy or JAX, never a hang."""
import contextlib
import json
import os
import shutil
import signal
import struct

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minimal_lm import CheckpointError, ConfigError, ModelConfig, init_params, load_hf, save_hf
from minimal_lm.hf_config import from_hf_config, to_hf_config
from minimal_lm.run_dir import load_run, read_model_config
from minimal_lm.safetensors_io import DTYPES, SafetensorsFile
from train import RunConfig, load_config
from train.checkpoint import manager, open_run_dir, save
from train.step import TrainState, optimizer

CFG = ModelConfig(vocab_size=64, d_model=16, num_layers=2, num_heads=2, num_kv_heads=1, mlp_dim=32, max_seq_len=32)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 60))  # e.g. FUZZ_EXAMPLES=5000 for a deeper search
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
OURS = (ConfigError, CheckpointError)

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40) | st.sampled_from([0, 1, -1, 2**63, 10**30]),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=6), v,
                                                                                             max_size=3), max_leaves=6)


@contextlib.contextmanager
def no_hang(seconds=20):
    """Fail the example instead of hanging the suite."""
    def alarm(*_):
        raise TimeoutError(f"loader still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def expect_ours(fn, where: str):
    """Call fn; any exception must be ours and name `where`."""
    with no_hang():
        try:
            return fn()
        except OURS as e:
            assert where in str(e), f"{type(e).__name__} does not name {where}: {e}"
        except FileNotFoundError as e:
            assert where in str(e), e
    return None


def mutate(d: dict, data, values=json_values) -> dict:
    """Set, delete or add up to three keys (nested dicts included) of a copy of d."""
    d = json.loads(json.dumps(d))
    for _ in range(data.draw(st.integers(1, 3))):
        target = d
        while isinstance(target, dict) and target and data.draw(st.booleans()):
            sub = [k for k, v in target.items() if isinstance(v, dict)]
            if not sub:
                break
            target = target[data.draw(st.sampled_from(sorted(sub)))]
        action = data.draw(st.sampled_from(["set", "set", "delete", "add"]))
        keys = sorted(target)
        if action == "add" or not keys:
            target[data.draw(st.text(min_size=1, max_size=12))] = data.draw(values)
        elif action == "delete":
            del target[data.draw(st.sampled_from(keys))]
        else:
            target[data.draw(st.sampled_from(keys))] = data.draw(values)
    return d


def random_params(cfg):
    """Params of the right shapes, filled by numpy (no compile)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    save_hf(path, CFG, random_params(CFG))
    return path


@pytest.fixture
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=st.data())
def test_mutated_hf_config(hf_dir, scratch, data):
    base = to_hf_config(CFG)
    hf = mutate(base, data)
    got = expect_ours(lambda: from_hf_config(hf, "x/config.json"), "x/config.json")
    assert got is None or isinstance(got, ModelConfig)
    d = scratch / "hf"
    if not d.exists():
        shutil.copytree(hf_dir, d)
    (d / "config.json").write_text(json.dumps(hf))
    loaded = expect_ours(lambda: load_hf(d), str(d))
    if loaded is not None:
        cfg, params = loaded
        assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, random_params(cfg))


@FUZZ
@given(doc=json_values | st.binary(max_size=40))
def test_random_hf_config_file(hf_dir, scratch, doc):
    d = scratch / "hf"
    if not d.exists():
        shutil.copytree(hf_dir, d)
    (d / "config.json").write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    assert expect_ours(lambda: load_hf(d), str(d / "config.json")) is None


def safetensors_bytes(header, data: bytes) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + data


entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(sorted(DTYPES)) | json_scalars,
    "shape": st.lists(st.integers(-2, 6), max_size=3) | json_values,
    "data_offsets": st.lists(st.integers(-4, 80), min_size=2, max_size=2) | json_values,
}) | json_values


@FUZZ
@given(header=st.dictionaries(st.text(max_size=6), entries, max_size=3), data=st.binary(max_size=64))
def test_random_safetensors_header(scratch, header, data):
    f = scratch / "x.safetensors"
    f.write_bytes(safetensors_bytes(header, data))

    def read():
        sf = SafetensorsFile(f)
        for name in sf.keys():
            a = np.asarray(sf.get(name))
            assert a.shape == sf.shape(name) and a.dtype == sf.dtype(name)
        return sf
    expect_ours(read, str(f))


@FUZZ
@given(data=st.data())
def test_mutated_safetensors_file(hf_dir, scratch, data):
    d = scratch / "hf"
    if not d.exists():
        shutil.copytree(hf_dir, d)
    raw = bytearray((hf_dir / "model.safetensors").read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    kind = data.draw(st.sampled_from(["flip", "truncate", "header"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, 8 + n - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        header = mutate(json.loads(raw[8:8 + n]), data, json_values)
        raw = bytearray(safetensors_bytes(header, bytes(raw[8 + n:])))
    (d / "model.safetensors").write_bytes(bytes(raw))
    expect_ours(lambda: load_hf(d), str(d))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with one checkpoint, written by the training side's own functions."""
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny_rope.py"),
                      ["model.d_model=16", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=16",
                       "train.seq_len=8", "train.progress=false"])
    open_run_dir(out, cfg)
    params = jax.tree.map(jax.numpy.asarray, random_params(cfg.model))
    with manager(out, cfg) as mngr:
        save(mngr, 0, TrainState(params, optimizer(cfg.train).init(params)))
    return out, cfg


@settings(FUZZ, max_examples=max(EXAMPLES // 3, 1))
@given(data=st.data())
def test_mutated_run_config(run_dir, scratch, data):
    src, cfg = run_dir
    d = scratch / "run"
    if not d.exists():
        shutil.copytree(src, d)
    doc = mutate(cfg.to_dict(), data)
    (d / "config.json").write_text(json.dumps(doc))
    expect_ours(lambda: RunConfig.from_dict(doc, "x/config.json"), "x/config.json")
    expect_ours(lambda: read_model_config(d), str(d / "config.json"))
    expect_ours(lambda: load_run(d), str(d))
    expect_ours(lambda: open_run_dir(d, cfg), str(d))

"""Every shipped config loads and builds; overrides are parsed, type-checked and named in errors."""
from pathlib import Path

import jax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimal_lm import ConfigError, Llama3Scaling, count_params
from train.__main__ import main
from train.config import RunConfig, apply_overrides, config_diff, config_keys, load_config
from train.step import init_state

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.py"))


def test_the_shipped_configs_are_there():
    names = {p.stem for p in CONFIGS}
    assert {"tiny_rope", "tiny_nope", "tiny_learned", "tiny_alibi", "gpt2_124m"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path):
    cfg = load_config(path)
    state = jax.eval_shape(lambda: init_state(cfg.model, cfg.train))
    n = count_params(state.params)
    assert n > 0 and len(jax.tree.leaves(state.opt_state)) > 0
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    if path.stem.startswith("tiny_"):
        assert cfg.model.position == {"rope": "rope", "nope": "none", "learned": "learned",
                                      "alibi": "alibi"}[path.stem[5:]]
        assert cfg.data.kind == "synthetic" and n < 2_000_000
    if path.stem == "gpt2_124m":
        m = cfg.model
        assert (m.num_layers, m.d_model, m.num_heads, m.max_seq_len, m.vocab_size) == (12, 768, 12, 1024, 50304)
        assert (m.position, m.dtype, m.param_dtype) == ("rope", "bfloat16", "float32")
        assert 120e6 < n < 130e6


def test_shipped_disrupt_configs_load():
    from probes.experiment import check_run
    from probes.experiment import load_config as load_disrupt_config

    paths = sorted(CONFIGS[0].parent.glob("*.json"))
    assert "disrupt_synthetic" in {p.stem for p in paths}
    for path in paths:
        _, runs = load_disrupt_config(path)
        assert all(check_run(r)["task"] for r in runs)


def test_tiny_configs_differ_only_in_position():
    base = load_config(CONFIGS[0].with_name("tiny_rope.py")).to_dict()
    for name in ("tiny_nope", "tiny_learned", "tiny_alibi"):
        other = load_config(CONFIGS[0].with_name(name + ".py")).to_dict()
        assert [d.split(":")[0] for d in config_diff(base, other)] == ["model.position"]


def test_overrides_parse_each_type():
    cfg = apply_overrides(RunConfig(), [
        "model.position=alibi", "train.steps=200", "train.lr=1e-3", "train.progress=false",
        "model.num_kv_heads=2", "model.attention_impl=none", "model.rope_scaling.factor=4",
        "data.kind=synthetic", "model.max_seq_len=512", "train.seq_len=512"])
    assert cfg.model.position == "alibi" and cfg.train.steps == 200 and cfg.train.lr == 1e-3
    assert cfg.train.progress is False and cfg.model.num_kv_heads == 2 and cfg.model.attention_impl is None
    assert cfg.model.rope_scaling == Llama3Scaling(factor=4.0)
    assert cfg.train.seq_len == 512  # both changes are applied before validation, in any order
    cfg = apply_overrides(cfg, ['model.rope_scaling={"factor": 2, "low_freq_factor": 2}'])
    assert cfg.model.rope_scaling == Llama3Scaling(factor=2, low_freq_factor=2)
    assert apply_overrides(cfg, ["model.rope_scaling=none"]).model.rope_scaling is None


@pytest.mark.parametrize("override,message", [
    ("train.stepz=3", r"unknown key 'train.stepz'; valid keys under train: train.steps, train.batch_size"),
    ("optim.lr=3", r"unknown key 'optim.lr'; valid keys: model, train, data"),
    ("model.d_modle=3", r"unknown key 'model.d_modle'.*model.d_model"),
    ("train.steps=1.5", r"train.steps='1.5': expected an integer"),
    ("train.lr=fast", r"train.lr='fast': expected a number"),
    ("train.progress=maybe", r"train.progress='maybe': expected a boolean"),
    ("train.steps=none", r"train.steps='none': expected an integer"),
    ("train.steps.x=1", r"unknown key 'train.steps.x': train.steps \(an integer\) has no sub-keys"),
    ("model.position=sinusoid", r"model: position='sinusoid': expected one of rope, none, learned, alibi"),
    ("model.num_heads=3", r"model: d_model=128 is not divisible by num_heads=3"),
    ("train.steps=0", r"train.steps=0: expected a positive integer"),
    ("train.warmup_steps=300", r"train.warmup_steps=300: expected fewer than train.steps=300"),
    ("train.seq_len=4096", r"train.seq_len=4096 exceeds model.max_seq_len=256"),
    ("data.kind=web", r"data.kind='web': expected one of synthetic, shards"),
    ("data.kind=shards", r"data.path is empty"),
    ("data.recall_pairs=9", r"data.recall_pairs=9: expected an integer from 0 to 8"),
    ("steps", r"expected key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [override])


def test_tuples_are_comma_separated_and_a_file_may_name_its_config(tmp_path):
    cfg = apply_overrides(RunConfig(), ["model.layer_windows=4,0"])
    assert cfg.model.layer_windows == (4, 0)
    with pytest.raises(ConfigError, match=r"model.layer_windows='4,x': expected comma-separated integers"):
        apply_overrides(RunConfig(), ["model.layer_windows=4,x"])
    (tmp_path / "two.py").write_text("from train.config import RunConfig\nSMALL = RunConfig()\n")
    assert load_config(f"{tmp_path / 'two.py'}:SMALL", ["train.steps=70"]).train.steps == 70
    with pytest.raises(ConfigError, match=r"expected a module-level `CONFIG = RunConfig\(...\)`"):
        load_config(tmp_path / "two.py")


def test_help_lists_the_subcommands_and_keys_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(f"\n  {name} " in out for name in ("prepare", "items", "keys"))
    assert "python -m train keys" in out
    assert main(["keys", "--config", str(CONFIGS[0].with_name("tiny_rope.py")), "train.steps=70"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert set(rows) == {key for key, _, _ in config_keys(RunConfig())}
    assert rows["train.steps"].split()[1] == "70" and "an integer" in rows["train.steps"]


def test_cli_config_errors_exit_2(tmp_path, capsys):
    tiny = str(CONFIGS[0].with_name("tiny_rope.py"))
    for args, message in [
        ([tiny, "train.stepz=3"], "unknown key 'train.stepz'; valid keys under train: train.steps"),
        ([tiny, "train.steps=abc"], "train.steps='abc': expected an integer"),
        ([str(tmp_path / "nope.py")], "nope.py: not found"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(["--config", args[0], "--out", str(tmp_path / "run"), *args[1:]])
        assert e.value.code == 2 and message in capsys.readouterr().err
    bad = tmp_path / "bad.py"
    bad.write_text("X = 1\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(bad), "--out", str(tmp_path / "run")])
    assert e.value.code == 2
    assert "expected a module-level `CONFIG = RunConfig(...)`, got NoneType" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_from_dict_names_bad_sections_and_keys():
    d = RunConfig().to_dict()
    with pytest.raises(ConfigError, match=r"expected sections model, train, data"):
        RunConfig.from_dict({"model": d["model"]})
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) stepz; valid keys: steps"):
        RunConfig.from_dict({**d, "train": {**d["train"], "stepz": 1}})


@settings(max_examples=50, deadline=None)
@given(steps=st.integers(2, 10**9), lr=st.floats(0, 1e3, allow_nan=False), layers=st.integers(1, 64),
       overwrite=st.booleans())
def test_overrides_round_trip(steps, lr, layers, overwrite):
    cfg = apply_overrides(RunConfig(), [
        f"train.steps={steps}", f"train.lr={lr!r}", f"model.num_layers={layers}",
        f"train.overwrite={str(overwrite).lower()}", "train.warmup_steps=1"])
    assert (cfg.train.steps, cfg.train.lr) == (steps, lr)
    assert (cfg.model.num_layers, cfg.train.overwrite) == (layers, overwrite)
    assert isinstance(cfg.train.lr, float) and isinstance(cfg.train.steps, int)
    changed = {d.split(":")[0] for d in config_diff(RunConfig().to_dict(), cfg.to_dict(), ignore=())}
    assert changed <= {"train.steps", "train.lr", "model.num_layers", "train.overwrite", "train.warmup_steps"}
    assert ("train.steps" in changed) == (steps != 300)


def test_config_diff_reads_a_key_added_since_as_its_default():
    old = RunConfig().to_dict()
    del old["data"]["vocab_size"], old["model"]["d_model"]
    new = RunConfig().to_dict()
    assert config_diff(old, new, defaults=RunConfig().to_dict()) == []
    assert config_diff(old, new) == ["data.vocab_size: '<absent>' -> 2048", f"model.d_model: '<absent>' -> "
                                     f"{new['model']['d_model']}"]
    changed = apply_overrides(RunConfig(), ["data.vocab_size=512"]).to_dict()
    assert config_diff(old, changed, defaults=RunConfig().to_dict()) == ["data.vocab_size: 2048 -> 512"]


def test_config_diff_ignores_bookkeeping_keys():
    a, b = RunConfig(), apply_overrides(RunConfig(), ["train.stop_after=5", "train.progress=false", "train.lr=1e-4"])
    assert config_diff(a.to_dict(), b.to_dict()) == ["train.lr: 0.003 -> 0.0001"]

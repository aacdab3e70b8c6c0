"""Bad command lines for `python -m train`, `python -m minimal_lm` and `python -m probes`: unknown keys,
wrong types, missing paths and conflicting run directories exit with code 2 and one message naming the
key or path (and, for keys, listing the valid ones); no traceback."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from minimal_lm.__main__ import main as lm_main
from probes.__main__ import main as probes_main
from train.__main__ import main as train_main

ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny_rope.py")


def exits_2(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", r"unknown key 'train.stepz'; valid keys under train: train.steps, train.batch_size"),
    ("modle.d_model=3", r"unknown key 'modle.d_model'; valid keys: model, train, data"),
    ("model.d_model.x=3", r"unknown key 'model.d_model.x': model.d_model \(an integer\) has no sub-keys"),
    ("train.steps=many", r"train.steps='many': expected an integer"),
    ("train.lr=fast", r"train.lr='fast': expected a number"),
    ("train.overwrite=maybe", r"train.overwrite='maybe': expected a boolean \(true/false\)"),
    ("model.position=spiral", r"position='spiral': expected one of rope, none, learned, alibi"),
    ("train.skip_nonfinite=-1", r"train.skip_nonfinite=-1: expected an integer >= 0"),
    ("steps", r"override 'steps': expected key=value"),
])
def test_train_bad_overrides(tmp_path, capsys, override, message):
    import re

    err = exits_2(train_main, ["--config", TINY, "--out", str(tmp_path / "run"), override], capsys)
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


def test_train_bad_paths_and_directories(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert "config file " in exits_2(train_main, ["--config", str(tmp_path / "nope.py"), "--out", out], capsys)
    err = exits_2(train_main, ["--config", TINY, "--out", out, "data.kind=shards", f"data.path={tmp_path / 'no'}"],
                  capsys)
    assert f"data.path={tmp_path / 'no'}: no such directory" in err
    (tmp_path / "file").write_text("x")
    assert "is a file" in exits_2(train_main, ["--config", TINY, "--out", str(tmp_path / "file")], capsys)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": {"d_model": 1}, "train": {}, "data": {}}))
    err = exits_2(train_main, ["--config", TINY, "--out", out], capsys)
    assert "holds a run with another config; differing keys: " in err and "model.d_model: 1 -> 128" in err
    assert "train.overwrite=true" in err
    assert "--out" in exits_2(train_main, ["--config", TINY], capsys)


def test_train_exit_code_of_the_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "--config", TINY, "--out", str(tmp_path / "r"),
                           "train.stepz=3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown key 'train.stepz'" in proc.stderr and "Traceback" not in proc.stderr


def test_minimal_lm_bad_input(tmp_path, capsys):
    err = exits_2(lm_main, ["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"], capsys)
    assert f"{tmp_path / 'nope'}: no such directory" in err
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"],
                                                               "vocab_size": "many"}))
    err = exits_2(lm_main, ["logits", "--model", str(tmp_path / "ckpt"), "--text-file", "t", "--out", "o"], capsys)
    assert "config.json: vocab_size='many': expected a positive integer" in err
    assert "unrecognized arguments: --bogus" in exits_2(lm_main, ["generate", "--model", "m", "--prompt", "p",
                                                                  "--bogus"], capsys)
    assert "invalid choice" in exits_2(lm_main, ["train"], capsys)


def test_probes_bad_input(tmp_path, capsys):
    err = exits_2(probes_main, ["massive", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], capsys)
    assert f"{tmp_path / 'nope'}: no such directory" in err
    study = str(ROOT / "configs" / "study_default.py")
    err = exits_2(probes_main, ["study", "--config", study, "--out", str(tmp_path / "s"), "study.schemez=rope"], capsys)
    assert "study.schemez" in err and "study.schemes" in err
    err = exits_2(probes_main, ["study", "--config", study, "--out", str(tmp_path / "s"), "train.steps=lots"], capsys)
    assert "train.steps='lots': expected an integer" in err
    err = exits_2(probes_main, ["study", "--config", study, "--out", str(tmp_path / "s"), "model.dmodel=3"], capsys)
    assert "unknown key 'model.dmodel'" in err and "model.d_model" in err
    (tmp_path / "runs.json").write_text(json.dumps({"runs": [{"task": "passkey", "digitz": 3}]}))
    err = exits_2(probes_main, ["disrupt", "--model", str(tmp_path), "--out", str(tmp_path / "o"),
                                "--config", str(tmp_path / "runs.json")], capsys)
    assert "digitz" in err and "valid keys" in err
    assert "unrecognized arguments: --bogus" in exits_2(probes_main, ["massive", "--model", "m", "--out", "o",
                                                                      "--bogus"], capsys)


def test_a_file_where_an_output_directory_goes_is_refused_and_kept(tmp_path, capsys):
    note = tmp_path / "notes.txt"
    note.write_text("keep me")
    for argv in (["massive", "--model", "m"], ["disrupt", "--model", "m", "--task", "facts"],
                 ["study", "--config", str(ROOT / "configs" / "study_default.py")]):
        err = exits_2(probes_main, [*argv, "--out", str(note)], capsys)
        assert f"python -m probes {argv[0]}: error: --out {note} is a file, expected a directory" in err
    err = exits_2(lm_main, ["export", "--model", "m", "--out", str(note)], capsys)
    assert f"--out {note} is a file, expected a directory" in err
    assert note.read_text() == "keep me"
    err = exits_2(train_main, ["items", "--config", TINY, "--out", str(tmp_path)], capsys)
    assert "is a directory, expected a .jsonl file" in err and not [f for f in tmp_path.iterdir() if ".tmp" in f.name]


def test_export_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    err = exits_2(lm_main, ["export", "--model", "m", "--out", str(tmp_path)], capsys)
    assert f"--out {tmp_path} is not empty (holds config.json); choose a new directory or pass --overwrite" in err
    assert (tmp_path / "config.json").read_text() == "{}"


def test_data_path_without_shards_is_refused(tmp_path, capsys):
    err = exits_2(train_main, ["--config", TINY, "--out", str(tmp_path / "r"), f"data.path={tmp_path}"], capsys)
    assert f"data.path='{tmp_path}' is set but data.kind='synthetic' does not read it" in err

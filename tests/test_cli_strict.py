"""Every command that loads a Hugging Face checkpoint: a config.json key that minimal_lm does not read is named in
one warning line on stderr (not Python's two-line warning format), and --strict refuses it with exit code 2."""
import json
import warnings

import pytest

from hf_testlib import save, tiny_hf, tiny_tokenizer
from minimal_lm.__main__ import main as lm_main
from minimal_lm.hf_config import IgnoredConfigKeys
from probes.__main__ import main as probes_main

EXTRA = "is_llama_config"  # a key of SmolLM2's published config.json that transformers writes and nobody reads


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny Llama with a tokenizer whose config.json holds one key that minimal_lm does not read."""
    path = tmp_path_factory.mktemp("extra_key")
    tiny_tokenizer(save(tiny_hf("llama", seed=0, vocab_size=300), path))
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, EXTRA: True}, indent=1))
    (path / "text.txt").write_text("The grass is green. The sky is blue.")
    return path


def _commands(ckpt, out):
    m = str(ckpt)
    return {
        "generate": (lm_main, ["generate", "--model", m, "--prompt", "The sky", "--max-new-tokens", "2"]),
        "logits": (lm_main, ["logits", "--model", m, "--text-file", str(ckpt / "text.txt"), "--out", str(out / "l")]),
        "export": (lm_main, ["export", "--model", m, "--out", str(out / "export")]),
        "massive": (probes_main, ["massive", "--model", m, "--out", str(out / "massive"), "--sites", "q",
                                  "--layers", "0", "--max-len", "16"]),
        "disrupt": (probes_main, ["disrupt", "--model", m, "--out", str(out / "disrupt"), "--task", "passkey", "--n",
                                  "1", "--max-tokens", "256", "--modes", "none", "--max-new-tokens", "2",
                                  "--no-perplexity", "--chat", "off"]),
        "checkpoints": (probes_main, ["checkpoints", "--out", str(out / "ckpts"), "--max-len", "16", f"0={m}"]),
    }


@pytest.mark.parametrize("command", ["generate", "logits", "export", "massive", "disrupt"])
def test_an_unread_key_is_one_warning_line_naming_it(ckpt, tmp_path, capfd, command):
    main, argv = _commands(ckpt, tmp_path)[command]
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as a user's shell sees it (pytest may turn warnings into errors)
        main(argv)
    err = capfd.readouterr().err
    named = [line for line in err.splitlines() if EXTRA in line]
    prog = f"python -m {'minimal_lm' if main is lm_main else 'probes'} {command}"
    assert len(named) == 1, err
    assert named[0].startswith(f"{prog}: warning: {ckpt / 'config.json'}: ignoring key(s) ") and EXTRA in named[0]
    assert "pass --strict to refuse them" in named[0]
    assert "IgnoredConfigKeys" not in err and ".py:" not in err and "warnings.warn" not in err


@pytest.mark.parametrize("command", ["generate", "logits", "export", "massive", "disrupt", "checkpoints"])
def test_strict_refuses_the_key_with_exit_code_2(ckpt, tmp_path, capsys, command):
    main, argv = _commands(ckpt, tmp_path)[command]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--strict"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and ": error: " in err and EXTRA in err and "strict mode refuses them" in err
    assert "Traceback" not in err


def test_other_warnings_keep_pythons_format(capsys):
    """Only minimal_lm's and probes' own warnings are rewritten; a library's keep their location."""
    from minimal_lm.cli import warnings_as_lines

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with warnings_as_lines("prog"):
            warnings.warn(IgnoredConfigKeys("x"), stacklevel=1)  # raised here, in tests/: not ours
    assert [w.category for w in caught] == [IgnoredConfigKeys] and capsys.readouterr().err == ""

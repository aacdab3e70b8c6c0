"""Bad training data, provoked for real on prepared shards: token ids outside the vocabulary, empty and
too-short shards, a tokenizer that does not match, a damaged meta.json. Each is a clear error naming the
file, raised before training starts (the run directory is not even created)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from minimal_lm import ConfigError
from train import load_config, run
from train.data import DataError
from train.prepare import prepare

CONFIGS = Path(__file__).parents[1] / "configs"
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(200))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "text.txt").write_text(TEXT)
    prepare([d / "text.txt"], d / "out", vocab_size=300, val_fraction=0.2)
    return d / "out"


@pytest.fixture
def copy(data, tmp_path):
    return Path(shutil.copytree(data, tmp_path / "data"))


def cfg(path, *extra):
    return load_config(CONFIGS / "tiny_rope.py", [
        "model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.max_seq_len=64", "train.seq_len=48",
        "train.batch_size=8", "train.steps=4", "train.warmup_steps=1", "train.progress=false", "data.kind=shards",
        f"data.path={path}", *extra])


def refused(data_dir, tmp_path, match, *extra, error=DataError):
    out = tmp_path / "run"
    with pytest.raises(error, match=match):
        run(cfg(data_dir, *extra), out)
    assert not out.exists(), "the error must come before anything is written"


def meta(d):
    return json.loads((d / "meta.json").read_text())


def vocab(d):
    return f"model.vocab_size={meta(d)['vocab_size']}"


def test_token_ids_outside_the_vocabulary(copy, tmp_path):
    m = meta(copy)
    name, n = m["splits"]["val"][0]
    ids = np.fromfile(copy / name, m["dtype"])
    ids[n // 2] = 5000
    ids.tofile(copy / name)
    refused(copy, tmp_path, rf"shard .*{name}: token id 5000 at position {n // 2} is outside the model's "
                            rf"vocabulary of {m['vocab_size']}", f"model.vocab_size={m['vocab_size']}")


def test_meta_vocabulary_larger_than_the_model(copy, tmp_path):
    v = meta(copy)["vocab_size"]
    refused(copy, tmp_path, rf"model\.vocab_size={v - 1} is smaller than the data's vocabulary \({v} tokens\)",
            f"model.vocab_size={v - 1}", error=ConfigError)


def test_too_short_and_empty_shards(copy, tmp_path):
    m = meta(copy)
    name, n = m["splits"]["val"][0]
    refused(copy, tmp_path, rf"split 'val' has no shard with {n + 1} tokens \(train\.seq_len \+ 1; longest {n}\)",
            vocab(copy), f"train.seq_len={n}", f"model.max_seq_len={n}")
    (copy / "empty.bin").write_bytes(b"")
    m["splits"]["val"] = [["empty.bin", 0]]
    (copy / "meta.json").write_text(json.dumps(m))
    refused(copy, tmp_path, r"split 'val' has no shard with 49 tokens \(train\.seq_len \+ 1; longest 0\)",
            vocab(copy))
    m["splits"]["val"] = [[name, n + 7]]
    (copy / "meta.json").write_text(json.dumps(m))
    refused(copy, tmp_path, rf"shard .*{name}: expected {2 * (n + 7)} bytes \({n + 7} uint16 tokens\), got {2 * n}",
            vocab(copy))


def test_tokenizer_that_does_not_match(copy, data, tmp_path):
    other = tmp_path / "other"
    (tmp_path / "t.txt").write_text(TEXT)
    prepare([tmp_path / "t.txt"], other, vocab_size=meta(copy)["vocab_size"] - 20)
    shutil.copyfile(other / "tokenizer.json", copy / "tokenizer.json")
    refused(copy, tmp_path, rf"tokenizer\.json: {meta(other)['vocab_size']} tokens, but .*meta\.json says "
                            rf"vocab_size={meta(copy)['vocab_size']}", vocab(copy))
    (copy / "tokenizer.json").write_text("{not a tokenizer")
    refused(copy, tmp_path, r"tokenizer\.json: cannot be read as a tokenizer", vocab(copy))


@pytest.mark.parametrize("change, match", [
    ("{oops", r"meta\.json: not valid JSON"),
    ("[]", r"meta\.json: expected a JSON object, got list"),
    ({"dtype": "float32"}, r"meta\.json: dtype='float32': expected one of uint8, uint16, int32, uint32"),
    ({"vocab_size": "300"}, r"meta\.json: vocab_size='300': expected a positive integer"),
    ({"splits": {"train": [["../x.bin", 10]], "val": []}}, r"meta\.json: splits: expected"),
    ({"splits": {"train": [["x.bin", -1]]}}, r"meta\.json: splits: expected"),
    ({"splits": {"train": []}}, r"meta\.json: no files for split 'train'"),
])
def test_damaged_meta_json(copy, tmp_path, change, match):
    v = vocab(copy)
    (copy / "meta.json").write_text(change if isinstance(change, str) else json.dumps({**meta(copy), **change}))
    refused(copy, tmp_path, match, v)


def test_missing_data_directory(tmp_path):
    refused(tmp_path / "nowhere", tmp_path, r"data\.path=.*nowhere: no such directory", error=FileNotFoundError)

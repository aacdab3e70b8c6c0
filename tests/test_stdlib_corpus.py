"""data.kind="stdlib": a tiny corpus of the first standard-library files, built deterministically (the same
bytes in two directories and in another process), split by file, cached once, never left half built."""
import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from minimal_lm import ModelConfig
from minimal_lm.config import ConfigError
from train import stdlib
from train.config import DataConfig, RunConfig
from train.data import ShardSource, make_source

TINY = DataConfig(kind="stdlib", vocab_size=320, max_files=8, val_fraction=0.3)


def digest(d) -> str:
    """sha256 over the corpus's shards, tokenizer, meta.json and files.json (not build.json: timings)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(d)):
        if name != "build.json":
            h.update(name.encode() + b"\0" + (d / name).read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data = dataclasses.replace(TINY, cache_dir=str(tmp_path_factory.mktemp("cache")))
    return data, stdlib.ensure_corpus(data, quiet=True)


def test_the_same_files_give_the_same_bytes(built, tmp_path):
    data, path = built
    again = stdlib.ensure_corpus(dataclasses.replace(data, cache_dir=str(tmp_path / "a")), quiet=True)
    assert again.name == path.name and again.name.startswith(f"stdlib-{sys.version.split()[0]}-v320-")
    assert digest(again) == digest(path)
    code = ("import sys; from train.config import DataConfig; from train.stdlib import ensure_corpus; "
            "print(ensure_corpus(DataConfig(kind='stdlib', vocab_size=320, max_files=8, val_fraction=0.3, "
            "cache_dir=sys.argv[1]), quiet=True))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert digest(type(path)(out)) == digest(path)  # another process: no per-process hash seeds in the BPE


def test_files_are_documents_split_by_file(built):
    data, path = built
    meta = json.loads((path / "meta.json").read_text())
    files = json.loads((path / "files.json").read_text())
    info = json.loads((path / "build.json").read_text())
    source, _ = stdlib.source_files(data)
    assert [rel for rel, _ in source] == sorted(files["train"] + files["val"]) and len(source) == 8
    assert files["train"] and files["val"] and not set(files["train"]) & set(files["val"])
    assert files == {s: [rel for rel, _ in d] for s, d in stdlib.split_files(source, 0.3).items()}
    assert [rel for rel in files["val"] if not stdlib.held_out(rel, 0.3)] == []  # by the hash of the path
    text = dict(source)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert meta["vocab_size"] == tok.get_vocab_size() <= 320 and meta["dtype"] == "uint16"
    for split in ("train", "val"):
        ids = np.concatenate([np.fromfile(path / f, np.uint16) for f, _ in meta["splits"][split]])
        assert len(ids) == info["tokens"][split] == sum(n for _, n in meta["splits"][split])
        assert (ids == meta["eos_id"]).sum() == len(files[split]) and ids[-1] == meta["eos_id"]
        docs = tok.decode(ids.tolist(), skip_special_tokens=False).split("<|endoftext|>")
        assert docs == [text[rel] for rel in files[split]] + [""]  # whole files, in order, one EOS after each


def test_cached_corpus_is_reused_and_a_killed_build_leaves_nothing(built, tmp_path, monkeypatch):
    data, path = built
    monkeypatch.setattr(stdlib, "build", lambda *a, **k: pytest.fail("rebuilt a cached corpus"))
    assert stdlib.ensure_corpus(data, quiet=True) == path

    def killed(files, out, *a, **k):
        (out / "train_00000.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    fresh = dataclasses.replace(data, cache_dir=str(tmp_path))
    dead = tmp_path / f".{stdlib.corpus_dir(fresh).name}.tmp999999999-x"  # a build killed earlier
    dead.mkdir()
    monkeypatch.setattr(stdlib, "build", killed)
    with pytest.raises(KeyboardInterrupt):
        stdlib.ensure_corpus(fresh, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_make_source_reads_the_built_corpus(built, tmp_path):
    data, path = built
    src = make_source(data)
    assert isinstance(src, ShardSource) and src.path == path and src.vocab_size <= 320
    src.check(65, 320)
    a = src.batch(3, 4, 64)
    assert a.shape == (4, 65) and np.array_equal(a, src.batch(3, 4, 64)) and a.max() < src.vocab_size
    assert src.eval_batch(0, 2, 64).shape == (2, 65)
    src.save_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()


def test_config_checks():
    with pytest.raises(ConfigError, match="data.vocab_size=2048 exceeds model.vocab_size=264"):
        RunConfig(model=ModelConfig(vocab_size=264), data=DataConfig(kind="stdlib"))
    RunConfig(model=ModelConfig(vocab_size=2048), data=DataConfig(kind="stdlib"))
    with pytest.raises(ConfigError, match="data.kind='stdlib' builds its own corpus"):
        DataConfig(kind="stdlib", path="x")
    for bad in ("vocab_size=100", "val_fraction=0", "max_files=-1"):
        key, value = bad.split("=")
        with pytest.raises(ConfigError, match=f"data.{key}"):
            DataConfig(kind="stdlib", **{key: type(getattr(TINY, key))(value)})


def test_too_few_files_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="need at least 2"):
        stdlib.ensure_corpus(DataConfig(kind="stdlib", max_files=1, cache_dir=str(tmp_path)), quiet=True)

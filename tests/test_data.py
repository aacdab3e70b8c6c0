"""`prepare` on a tiny text file, memmapped shards and batches that are a pure function of (seed, step)."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from train.__main__ import main
from train.config import DataConfig
from train.data import Shards, ShardSource, make_source
from train.prepare import prepare

TEXT = "".join(f"Doc line {i}: the grass is green and the sky is blue, {i * 7 % 13} times.\n" for i in range(300))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "a.txt").write_text(TEXT)
    (d / "b.txt").write_text("Another file.\nWith two lines.\n")
    prepare([d / "a.txt", d / "b.txt"], d / "out", vocab_size=400, val_fraction=0.1, shard_tokens=1000)
    return d


def test_prepare_writes_shards_that_decode_to_the_text(data_dir):
    out = data_dir / "out"
    meta = json.loads((out / "meta.json").read_text())
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.get_vocab_size() <= 400
    assert len(meta["splits"]["train"]) > 1 and all(n <= 1000 for _, n in meta["splits"]["train"])
    ids = {s: np.concatenate([np.fromfile(out / f, np.uint16) for f, _ in files])
           for s, files in meta["splits"].items()}
    eos = meta["eos_id"]
    train_docs = tok.decode(ids["train"].tolist(), skip_special_tokens=False).split("<|endoftext|>")
    val_docs = tok.decode(ids["val"].tolist(), skip_special_tokens=False).split("<|endoftext|>")
    lines = TEXT.splitlines(keepends=True)
    assert train_docs == ["".join(lines[:270]), "Another file.\nWith two lines.\n", ""]  # 10% of 2 lines: none
    assert val_docs == ["".join(lines[270:]), ""]
    assert (ids["train"] == eos).sum() == 2 and ids["train"][-1] == eos


def test_prepare_with_a_given_tokenizer_gives_the_same_ids(data_dir, tmp_path):
    prepare([data_dir / "a.txt", data_dir / "b.txt"], tmp_path, tokenizer=data_dir / "out" / "tokenizer.json",
            val_fraction=0.1, shard_tokens=1000)
    for f in ("train_00000.bin", "val_00000.bin", "tokenizer.json"):
        assert (tmp_path / f).read_bytes() == (data_dir / "out" / f).read_bytes()


def test_shard_batches_are_a_pure_function_of_seed_and_step(data_dir):
    src = make_source(DataConfig(kind="shards", path=str(data_dir / "out"), seed=3))
    assert isinstance(src, ShardSource)
    a = src.batch(5, 4, 16)
    assert a.shape == (4, 17) and a.dtype == np.int32
    assert np.array_equal(a, src.batch(5, 4, 16)) and not np.array_equal(a, src.batch(6, 4, 16))
    assert not np.array_equal(a, make_source(DataConfig(kind="shards", path=str(data_dir / "out"))).batch(5, 4, 16))
    train = [np.asarray(m) for m in src.train.arrays]
    for row in a:  # every row is a window of one shard
        assert any(any(np.array_equal(row, s[o:o + 17]) for o in range(len(s) - 16)) for s in train)
    val = np.concatenate([np.asarray(m) for m in src.val.arrays])
    e = src.eval_batch(0, 2, 16)
    assert np.array_equal(e, src.eval_batch(0, 2, 16))
    assert all(any(np.array_equal(r, val[o:o + 17]) for o in range(len(val) - 16)) for r in e)


def test_bad_data_gives_clear_errors(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no meta.json; write one with `python -m train prepare`"):
        Shards(tmp_path, "train")
    src = Shards(data_dir / "out", "val")
    with pytest.raises(ValueError, match=r"split 'val' has no shard with 100000 tokens"):
        src.windows(np.random.default_rng(0), 2, 100000)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (data_dir / "out").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "train_00001.bin").write_bytes(b"\0\0")
    with pytest.raises(ValueError, match=r"train_00001.bin: expected 2000 bytes \(1000 uint16 tokens\), got 2"):
        Shards(bad, "train")


def test_prepare_cli(data_dir, tmp_path, capsys):
    assert main(["prepare", str(data_dir / "a.txt"), "--out", str(tmp_path), "--vocab-size", "300"]) == 0
    assert "vocab 300" in capsys.readouterr().out and (tmp_path / "train_00000.bin").is_file()
    with pytest.raises(SystemExit) as e:
        main(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    assert e.value.code == 2 and "missing.txt not found" in capsys.readouterr().err

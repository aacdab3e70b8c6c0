"""Prompt files, encoding and left-padded batches for probes."""
import json

import pytest

from minimal_lm.batching import bucket_length, left_pad
from probes import prompts


def test_left_padded_batches_sort_pad_left_and_keep_one_shape():
    lists = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 13], [14, 15]]
    batches = list(prompts.left_padded_batches(lists, batch_size=3, pad_id=0))
    assert [b[0].shape for b in batches] == [(3, 32), (3, 32)]
    tokens, mask = batches[0]
    assert tokens[0].tolist() == [0] * 31 + [4] and tokens[2].tolist() == [0] * 29 + [1, 2, 3]
    assert mask.sum(1).tolist() == [1, 2, 3] and (tokens[~mask] == 0).all()
    tokens, mask = batches[1]
    assert mask.sum(1).tolist() == [9, 0, 0] and tokens[0, -9:].tolist() == lists[2]
    assert prompts.num_batches(4, 3) == 2


def test_bucket_length_rounds_to_32_under_the_cap():
    assert [bucket_length(n) for n in (1, 32, 33, 100)] == [32, 32, 64, 128]
    assert bucket_length(33, cap=40) == 40 and bucket_length(50, cap=40) == 50 and bucket_length(9, cap=16) == 16
    tokens_BT, mask_BT = left_pad([[5, 6], [7]], rows=3, pad_id=1, length=4)
    assert tokens_BT.tolist() == [[1, 1, 5, 6], [1, 1, 1, 7], [1, 1, 1, 1]] and mask_BT.sum(1).tolist() == [2, 1, 0]


def test_read_files_and_errors_name_the_line(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('"plain"\n\n{"prompt": "a", "answer": "b"}\n{"tokens": [1, 2]}\n')
    items = prompts.read_jsonl(good)
    assert items == ["plain", {"prompt": "a", "answer": "b"}, {"tokens": [1, 2]}]
    assert prompts.encode(items[2:], None, vocab_size=4) == [[1, 2]]
    with pytest.raises(ValueError, match="no tokenizer"):
        prompts.encode(items[:1], None)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 2\)"):
        prompts.encode(items[2:], None, vocab_size=2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
        prompts.read_jsonl(bad)
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1: object has none of the keys .* \\(found question\\)"):
        prompts.read_jsonl(bad)
    text = tmp_path / "t.txt"
    text.write_text("one\ntwo\n\n\n  three  \n")
    assert prompts.read_text_file(text) == ["one two", "three"]
    text.write_text("\n\n")
    with pytest.raises(ValueError, match="no text"):
        prompts.read_text_file(text)

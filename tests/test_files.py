"""The one atomic writer and the one JSON-lines reader (minimal_lm.files), and a run's logs (train.checkpoint)."""
import json

import numpy as np
import pytest

from minimal_lm.files import atomic_file, read_jsonl, read_log, write_atomic
from train.checkpoint import append_log, truncate_log


def test_an_interrupted_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "x.json"
    write_atomic(path, "old\n")
    with pytest.raises(RuntimeError), atomic_file(path, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    with atomic_file(tmp_path / "a.npz") as f:
        np.savez(f, a=np.arange(3))
    assert np.load(tmp_path / "a.npz")["a"].tolist() == [0, 1, 2]


def test_json_lines_name_the_bad_line_and_a_log_skips_a_cut_off_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "lo')
    assert read_log(path) == [{"step": 1}, {"step": 2}]
    with pytest.raises(ValueError, match=r"log.jsonl:4: not valid JSON"):
        read_jsonl(path)
    path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:1: not valid JSON"):
        read_log(path)
    assert read_log(tmp_path / "missing.jsonl") == []


def test_truncating_a_log_keeps_one_line_per_step_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for line in ({"step": 1, "v": 0}, {"step": 2, "v": 0}, {"step": 2, "v": 1}, {"step": 3, "v": 0}):
        append_log(path, line)
    truncate_log(path, 2)
    assert read_log(path) == [{"step": 1, "v": 0}, {"step": 2, "v": 1}]
    path.write_text(path.read_text() + '{"step": 3, "v')  # a killed writer's half line
    truncate_log(path, 2)
    append_log(path, {"step": 3, "v": 2})
    assert [json.loads(s) for s in path.read_text().splitlines()] == [{"step": 1, "v": 0}, {"step": 2, "v": 1},
                                                                      {"step": 3, "v": 2}]

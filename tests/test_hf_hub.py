"""from_pretrained(hub id, revision=...) through huggingface_hub.snapshot_download, offline: a stand-in records
the arguments it gets and serves a tiny checkpoint, or fails as an offline hub does."""
import sys

import numpy as np
import pytest

from hf_testlib import save, tiny_hf
from minimal_lm import CheckpointError, from_pretrained

hub = pytest.importorskip("huggingface_hub")


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return save(tiny_hf("llama", seed=3), tmp_path_factory.mktemp("hub") / "snapshot")


def test_revision_is_passed_to_snapshot_download(local, monkeypatch):
    calls = []

    def snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        return local

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    cfg, params, _ = from_pretrained("EleutherAI/pythia-160m", revision="step1000")
    want_cfg, want, _ = from_pretrained(local)
    assert cfg == want_cfg
    np.testing.assert_array_equal(np.asarray(params["embed"]), np.asarray(want["embed"]))
    (repo_id, kw), = calls
    assert repo_id == "EleutherAI/pythia-160m" and kw["revision"] == "step1000"
    assert {"*.json", "*.safetensors"} <= set(kw["allow_patterns"])
    assert not any("bin" in p for p in kw["allow_patterns"])
    from_pretrained("EleutherAI/pythia-160m")
    assert calls[-1][1]["revision"] is None


def test_offline_or_missing_revision_names_id_and_revision(monkeypatch, tmp_path):
    def offline(repo_id, **kw):
        raise hub.errors.LocalEntryNotFoundError("cannot reach the hub")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(CheckpointError, match=r"EleutherAI/pythia-160m \(revision step1000\): not a local directory.*"
                                              r"failed.*LocalEntryNotFoundError: cannot reach the hub"):
        from_pretrained("EleutherAI/pythia-160m", revision="step1000")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kw: str(tmp_path))
    with pytest.raises(CheckpointError, match=r"\(revision step1000\): the hub snapshot .* has no .safetensors"):
        from_pretrained("EleutherAI/pythia-160m", revision="step1000")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match=r"pythia-160m \(revision step1000\).*pip install huggingface_hub"):
        from_pretrained("EleutherAI/pythia-160m", revision="step1000")


def test_a_revision_with_a_local_path_is_refused(local, monkeypatch):
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **kw: pytest.fail("nothing may be downloaded"))
    with pytest.raises(CheckpointError, match=r"snapshot: revision='step1000' is for Hugging Face Hub ids, but .* "
                                              "is a local path"):
        from_pretrained(local, revision="step1000")

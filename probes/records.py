"""Probe records over training: one file per probed step in RUN_DIR/probes/, written atomically.

Each record holds the step, the tokens seen, the norm matrices M [layers, heads, head_dim] per site, their
summary metrics (probes.massive.summarize) and the attention-sink statistics (probes.sinks.sink_summary; None
in records written before they were recorded). A record is written to a temporary file and renamed,
so a crash never leaves a half-written record; writing a step again replaces it, so a resumed run
continues the series without duplicates.
"""
from __future__ import annotations

import functools
import json
import re
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from minimal_lm import ModelConfig, forward
from minimal_lm.files import atomic_file
from probes.massive import column_sum_squares, frequency_map, probe_sites, summarize
from probes.sinks import EPS, FirstTokenMass, sink_summary

_NAME = re.compile(r"^step_(\d{8,})\.npz$")


class Record(NamedTuple):
    step: int
    tokens_seen: int
    norms: dict  # site -> float32 [L, heads, head_dim]
    summary: dict  # site -> per-layer metrics
    sinks: dict | None = None  # probes.sinks.sink_summary; None: not recorded


def record_dir(run_dir) -> Path:
    return Path(run_dir) / "probes"


def make_record(step: int, tokens_seen: int, norms: dict, freq: dict, lam: float = 5.0, k: int = 1,
                first_token_mass=None, eps: float = EPS) -> Record:
    """A record of norm matrices (site -> [L, heads, head_dim]) with their per-layer summaries, and of the
    first-token attention mass alpha [L, H] (probes.sinks) with its sink statistics at threshold eps."""
    norms = {s: np.asarray(m, np.float32) for s, m in norms.items()}
    sinks = None if first_token_mass is None else sink_summary(first_token_mass, eps)
    return Record(int(step), int(tokens_seen), norms, {s: summarize(m, freq, lam, k) for s, m in norms.items()},
                  sinks)


def write_record(run_dir, record: Record) -> Path:
    out = record_dir(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"step_{record.step:08d}.npz"
    meta = {"step": record.step, "tokens_seen": record.tokens_seen, "summary": record.summary}
    if record.sinks is not None:
        meta["sinks"] = record.sinks
    with atomic_file(path) as f:
        np.savez(f, __meta__=np.array(json.dumps(meta)),
                 **{s: np.asarray(m, np.float32) for s, m in record.norms.items()})
    return path


def read_records(run_dir) -> list[Record]:
    """All complete records, sorted by step. An unreadable record is skipped with a warning naming it."""
    records = []
    for path in sorted(record_dir(run_dir).glob("step_*.npz")):
        if not _NAME.match(path.name):
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                norms = {k: z[k] for k in z.files if k != "__meta__"}
            records.append(Record(int(meta["step"]), int(meta["tokens_seen"]), norms, meta["summary"],
                                  meta.get("sinks")))
        except Exception as e:  # a damaged file must not hide the rest of the series
            warnings.warn(f"skipping unreadable probe record {path}: {e}")
    return sorted(records, key=lambda r: r.step)


def drop_after(run_dir, step: int) -> list[int]:
    """Remove records past `step` (a run resumed from an earlier checkpoint recomputes them)."""
    dropped = []
    for path in record_dir(run_dir).glob("step_*.npz"):
        m = _NAME.match(path.name)
        if m and int(m.group(1)) > step:
            path.unlink()
            dropped.append(int(m.group(1)))
    return sorted(dropped)


@struct.dataclass
class _ProbeCapture:
    """Column sums of squares at `norm_sites` and the first-token attention mass, in one forward."""

    norm_sites: tuple[str, ...] = struct.field(pytree_node=False)
    mass: FirstTokenMass = FirstTokenMass()
    mask_BT: Any = struct.field(default=None, repr=False)

    @property
    def sites(self):
        return (*self.norm_sites, "attn_probs")

    def bind(self, mask_BT) -> "_ProbeCapture":
        return self.replace(mask_BT=mask_BT, mass=self.mass.bind(mask_BT))

    def __call__(self, site, layer, x):
        if site == "attn_probs":
            return self.mass(site, layer, x)
        return column_sum_squares(x, self.mask_BT, per_example=False) if site in self.norm_sites else None


@functools.partial(jax.jit, static_argnames=("cfg", "sites"))
def probe_stats(params, tokens_BT, mask_BT, cfg: ModelConfig, sites: tuple[str, ...]):
    """({site: float32 [L, heads, head_dim] sums of squares}, float32 [L, H] first-token attention sums) of
    one forward with explicit attention (the probabilities are needed; the norms come along)."""
    captured = forward(params, tokens_BT, cfg, mask_BT=mask_BT, capture=_ProbeCapture(sites), last_only=True).captured
    return {s: captured[s] for s in sites}, captured["attn_probs"]


class TrainingProbe:
    """Norm matrices and first-token attention mass of a fixed probe batch (one jitted forward,
    probe_stats), saved as a record."""

    def __init__(self, cfg: ModelConfig, tokens_BT, mask_BT=None, sites=None, lam: float = 5.0, k: int = 1,
                 eps: float = EPS):
        self.cfg, self.sites, self.lam, self.k = cfg, tuple(probe_sites(cfg) if sites is None else sites), lam, k
        self.eps = eps
        self.tokens_BT = jnp.asarray(tokens_BT, jnp.int32)
        self.mask_BT = jnp.ones(self.tokens_BT.shape, bool) if mask_BT is None else jnp.asarray(mask_BT, bool)
        self.freq = frequency_map(cfg)

    def measure(self, params, step: int, tokens_seen: int) -> Record:
        sq, sums_LH = probe_stats(params, self.tokens_BT, self.mask_BT, self.cfg, self.sites)
        norms = {s: np.sqrt(np.asarray(sq[s], np.float64)).astype(np.float32) for s in self.sites}
        alpha_LH = np.asarray(sums_LH, np.float64) / int(self.mask_BT.sum())
        return make_record(step, tokens_seen, norms, self.freq, self.lam, self.k, alpha_LH, self.eps)

    def __call__(self, run_dir, params, step: int, tokens_seen: int) -> Record:
        record = self.measure(params, step, tokens_seen)
        write_record(run_dir, record)
        return record

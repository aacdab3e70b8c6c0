"""A sweep of drivers on 2 CPU cores (issue 15, "find where the effect begins"):
    python -m probes sweep --config configs/sweep_cpu.py --out runs/sweep

The base study is the default's (configs/study_default.py: the stdlib corpus, a decoder of 2 layers, d 128, 4 heads
of 32, lr 3e-3, rope_theta 10000) with RoPE and NoPE only, one seed, 300 steps of 8 x 256 tokens (614K tokens per
run), probed every 25 steps on 16 held-out rows of 256 tokens (the same rows in every setting), no token-class
measure and no disruption (the table needs neither). Each setting of SETTINGS changes one driver:
- steps900: 3x the steps (warmup scaled with them, so the schedule keeps its shape);
- d256: d_model 256 with 8 heads, so head_dim stays 32 (the max ratio over a head's dims, and RoPE's frequencies,
  depend on head_dim: a wider head alone would change them);
- layers4: 4 layers; lr3x: lr 9e-3; theta100, theta1e6: rope_theta 100 and 1e6 (their NoPE runs are the base's
  NoPE run again, theta being RoPE's alone: their numbers should equal the base's);
- seq512: sequences of 512 tokens, 4 per batch, so a step sees the same 2048 tokens as the base.
`--only base,d256` runs some; `--report-only` rebuilds runs/sweep/sweep.md from finished runs; `study.seeds=0,1`
(as an override) adds a seed to every setting, for a spread, at twice the time. The seed spread at the base's
shape is measured by configs/study_cpu_long.py (three seeds); read single-seed differences against it.

Time: see the README's results section for the measured wall time (the table's last column gives the train
seconds per setting). A killed sweep resumes where it stopped (rerun it).
"""
from pathlib import Path

from probes.study import load_study
from probes.sweep import SweepConfig

STUDY = load_study(Path(__file__).with_name("study_default.py"), [
    "study.schemes=rope,none", "study.seeds=0", "train.steps=300", "train.warmup_steps=30", "train.batch_size=8",
    "train.seq_len=256", "model.max_seq_len=256", "train.checkpoint_every=100", "study.probe_every=25",
    "study.probe_rows=16", "study.probe_len=256", "study.class_rows=0", "study.disrupt_every=0",
    "study.heatmap_steps="])

SETTINGS = {
    "base": [],
    "steps900": ["train.steps=900", "train.warmup_steps=90"],
    "d256": ["model.d_model=256", "model.num_heads=8"],
    "layers4": ["model.num_layers=4"],
    "lr3x": ["train.lr=0.009"],
    "theta100": ["model.rope_theta=100"],
    "theta1e6": ["model.rope_theta=1000000"],
    "seq512": ["train.seq_len=512", "model.max_seq_len=512", "train.batch_size=4"],
}

SWEEP = SweepConfig(study=STUDY, settings=SETTINGS)
CONFIG = STUDY.base

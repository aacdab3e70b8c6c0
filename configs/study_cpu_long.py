"""The default study (configs/study_default.py: the tiny decoder, 2 layers, d 128, 4 heads of 32, on the stdlib
corpus, all four schemes) at the scale of half an hour on 2 CPU cores: 1000 steps of 8 x 256 tokens (2.05M tokens,
about half a pass over the 3.8M train tokens) per run, three seeds per scheme (12 runs), probed every 25 steps,
the token-class measure every 250 steps and at the end on 32 held-out rows.
    python -m probes study --config configs/study_cpu_long.py --out runs/study_cpu_long

Measured on 2026-12-02 (2 cores, Intel Xeon, no other job running; jax 0.10.2): 1454 s (24 minutes) for the
12 runs, about 2 minutes of training (8-9 steps/s) and 10-20 s of compiling and final measures per run. Its
figures and numbers are in the README. A killed study resumes where it stopped (rerun the command);
`study.seeds=0,1` or `train.steps=600` shorten it."""
from pathlib import Path

from probes.study import load_study

STUDY = load_study(Path(__file__).with_name("study_default.py"), [
    "train.steps=1000", "train.warmup_steps=100", "train.eval_every=250", "train.eval_batches=4",
    "train.checkpoint_every=250", "study.probe_every=25", "study.disrupt_every=250", "study.heatmap_steps=0,250,1000",
    "study.seeds=0,1,2", "study.class_rows=32"])
CONFIG = STUDY.base

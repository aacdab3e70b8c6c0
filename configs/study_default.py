"""The default study (`python -m probes study --config configs/study_default.py --out runs/study`): the tiny
decoder of tiny_rope.py (2 layers, d 128, 4 heads of 32; 250 steps of 8 x 256 tokens) trained once per
positional scheme on the synthetic corpus, probed every 10 steps on held-out synthetic prompts, disrupted
every 50 steps and at the end on 16 contextual and 16 parametric held-out items. About 10 minutes on
2 CPU cores. CONFIG is the base run config that every scheme shares."""
from pathlib import Path

from probes.study import StudyConfig
from train import apply_overrides, load_config

CONFIG = apply_overrides(load_config(Path(__file__).with_name("tiny_rope.py")), ["train.eval_batches=2"])

STUDY = StudyConfig(
    base=CONFIG,
    schemes=("rope", "none", "alibi", "learned"),
    probe_every=10,
    probe_source="items",
    probe_rows=16,
    heatmap_steps=(0, 100, 250),
    disrupt_tasks="synthetic",
    disrupt_n=16,
    disrupt_every=50,
    disrupt_modes=("none", "massive", "non_massive"),
    disrupt_top_k=1,
)

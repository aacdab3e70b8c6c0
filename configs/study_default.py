"""The default study (`make demo`: `python -m probes study --config configs/study_default.py --out runs/study`):
a tiny decoder (2 layers, d 128, 4 heads of 32, 2048-token BPE) trained once per positional scheme on the
stdlib corpus (data.kind=stdlib: the running Python's standard library, built once and cached, ~30 s), 120
steps (STEPS) of 8 x 256 tokens, probed every 10 steps on 16 held-out rows; every 40 steps and at the end the
contextual / parametric token-class measure on 16 other held-out rows, intact and with the top-1 massive or
non-massive Q/K dim per head disrupted. Shapes and optimiser are the library's defaults at this size (init_std
0.02, lr 3e-3), not tuned to make anything show. One seed: add seeds with `study.seeds=0,1,2` (three times the
time). Measured on 2026-12-02: 8.5 minutes on 2 CPU cores shared with other jobs (load average 3-4),
including the corpus build (32 s); about 110 s per scheme. CONFIG is the base run config that every scheme shares.

SYNTHETIC: the previous default, the synthetic corpus with its held-out contextual and parametric items as the
disruption experiment (tiny_rope.py, 250 steps):
    python -m probes study --config configs/study_default.py:SYNTHETIC --out runs/study_synthetic"""
from pathlib import Path

from minimal_lm import ModelConfig
from probes.study import StudyConfig
from train import DataConfig, RunConfig, TrainConfig, apply_overrides, load_config

STEPS = 120
CONFIG = RunConfig(
    model=ModelConfig(vocab_size=2048, d_model=128, num_layers=2, num_heads=4, max_seq_len=256, position="rope"),
    train=TrainConfig(steps=STEPS, batch_size=8, seq_len=256, warmup_steps=STEPS // 10, eval_every=40,
                      eval_batches=2, checkpoint_every=40, keep_checkpoints=4),
    data=DataConfig(kind="stdlib", vocab_size=2048),
)

STUDY = StudyConfig(
    base=CONFIG,
    schemes=("rope", "none", "alibi", "learned"),
    probe_every=10,
    probe_source="heldout",
    probe_rows=16,
    probe_len=256,
    heatmap_steps=(0, STEPS),
    disrupt_tasks="none",
    disrupt_every=40,
    disrupt_modes=("none", "massive", "non_massive"),
    disrupt_top_k=1,
    class_rows=16,
    class_len=256,
)

SYNTHETIC = StudyConfig(
    base=apply_overrides(load_config(Path(__file__).with_name("tiny_rope.py")), ["train.eval_batches=2"]),
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

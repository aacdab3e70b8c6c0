"""GPU studies of ~33M-parameter models (8 layers, d 512, 8 heads of 64, bf16 compute), one per positional
scheme; each model trains on about 330M tokens, a few tens of minutes per scheme on one H100.

STUDY: a text corpus prepared first with `python -m train prepare --out data/text FILE ...` (8192-token
BPE), probed on held-out corpus rows, disrupted on the paper's passkey (128 tokens, 6 digits) and Yes/No
fact questions:
    python -m probes study --config configs/study_gpu.py --out runs/study_gpu data.path=data/text
SYNTHETIC: the synthetic corpus, probed and disrupted on its held-out contextual and parametric items:
    python -m probes study --config configs/study_gpu.py:SYNTHETIC --out runs/study_gpu_synthetic
CONFIG is STUDY's base run config."""
import dataclasses

from minimal_lm import ModelConfig
from probes.study import StudyConfig
from train import DataConfig, RunConfig, TrainConfig

MODEL = ModelConfig(vocab_size=8192, d_model=512, num_layers=8, num_heads=8, max_seq_len=512, position="rope",
                    dtype="bfloat16", param_dtype="float32")
TRAIN = TrainConfig(steps=10000, batch_size=64, seq_len=512, lr=1e-3, warmup_steps=500, min_lr_ratio=0.1,
                    eval_every=250, eval_batches=8, log_every=10, checkpoint_every=1000, keep_checkpoints=3)

CONFIG = RunConfig(model=MODEL, train=TRAIN, data=DataConfig(kind="shards", path="data/text"))

STUDY = StudyConfig(base=CONFIG, probe_every=250, probe_source="heldout", probe_rows=16, probe_len=512,
                    heatmap_steps=(0, 1000, 10000), disrupt_tasks="paper", disrupt_n=100, disrupt_every=2500,
                    disrupt_max_new_tokens=8, disrupt_batch_size=50)

SYNTHETIC = dataclasses.replace(
    STUDY, base=RunConfig(model=MODEL.replace(vocab_size=264), train=TRAIN, data=DataConfig(kind="synthetic")),
    probe_source="items", probe_rows=32, disrupt_tasks="synthetic")

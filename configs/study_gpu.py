"""GPU studies of ~33M-parameter models (8 layers, d 512, 8 heads of 64, bf16 compute), one per positional
scheme; each model trains on 10,000 steps of 64 x 512 tokens (328M tokens), sized for about 30 minutes per scheme
on one H100/H200 (an estimate: this config has never run on a GPU; tests/test_study.py runs it end to end on CPU
at a tiny size, so only its speed is unknown).

STUDY: the stdlib corpus (data.kind=stdlib, built once and cached: the standard library with its test
directories, 8192-token BPE; not built at this vocabulary yet: the test directories hold about 60% of the bytes,
so roughly 2.5 times the 3.8M train tokens without them, and 328M tokens are tens of passes over it: the models
memorise, which the held-out losses show), probed on held-out rows every 250 steps; the contextual / parametric
token classes (64 held-out rows of 512 tokens) intact and with the massive / non-massive Q/K dims disrupted every
2500 steps and at the end. Add seeds with study.seeds=0,1,2.
    python -m probes study --config configs/study_gpu.py --out runs/study_gpu
A corpus of your own, prepared with `python -m train prepare --out data/text FILE ...` (an 8192-token BPE or
smaller), is one override away; add the paper's passkey and Yes/No fact questions for an English corpus:
    python -m probes study --config configs/study_gpu.py --out runs/study_text data.kind=shards data.path=data/text \\
        study.disrupt_tasks=paper
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

CONFIG = RunConfig(model=MODEL, train=TRAIN, data=DataConfig(kind="stdlib", vocab_size=8192, stdlib_tests=True))

STUDY = StudyConfig(base=CONFIG, probe_every=250, probe_source="heldout", probe_rows=16, probe_len=512,
                    heatmap_steps=(0, 1000, 10000), disrupt_tasks="none", disrupt_n=100, disrupt_every=2500,
                    disrupt_max_new_tokens=8, disrupt_batch_size=32, class_rows=64, class_len=512)

SYNTHETIC = dataclasses.replace(
    STUDY, base=RunConfig(model=MODEL.replace(vocab_size=264), train=TRAIN, data=DataConfig(kind="synthetic")),
    probe_source="items", probe_rows=32, disrupt_tasks="synthetic")

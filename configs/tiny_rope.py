"""A tiny RoPE decoder on the synthetic corpus: about a minute on 2 CPU cores."""
from minimal_lm import ModelConfig
from train import DataConfig, RunConfig, TrainConfig

CONFIG = RunConfig(
    model=ModelConfig(vocab_size=264, d_model=128, num_layers=2, num_heads=4, max_seq_len=256, position="rope"),
    train=TrainConfig(steps=300, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=30, eval_every=100,
                      checkpoint_every=100),
    data=DataConfig(kind="synthetic"),
)

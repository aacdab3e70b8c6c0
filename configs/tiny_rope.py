"""A tiny RoPE decoder (2 layers, d 128, 4 heads of 32) on the synthetic corpus: about a minute on
2 CPU cores. tiny_nope, tiny_learned and tiny_alibi change only model.position."""
from minimal_lm import ModelConfig
from train import DataConfig, RunConfig, TrainConfig

CONFIG = RunConfig(
    model=ModelConfig(vocab_size=264, d_model=128, num_layers=2, num_heads=4, max_seq_len=256, position="rope"),
    train=TrainConfig(steps=150, batch_size=8, seq_len=256, lr=3e-3, warmup_steps=15, eval_every=50,
                      eval_batches=4, checkpoint_every=50, keep_checkpoints=4),
    data=DataConfig(kind="synthetic"),
)

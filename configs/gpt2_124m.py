"""A GPT-2-small-shape decoder (12 layers, d 768, 12 heads, seq 1024, ~124M params) with RoPE and bf16
compute, for one GPU. Data: token shards from `python -m train prepare --vocab-size 50257 ...`, then
`python -m train --config configs/gpt2_124m.py --out runs/gpt2 data.path=DATA_DIR`."""
from minimal_lm import ModelConfig
from train import DataConfig, RunConfig, TrainConfig

CONFIG = RunConfig(
    model=ModelConfig(vocab_size=50304, d_model=768, num_layers=12, num_heads=12, max_seq_len=1024,
                      position="rope", dtype="bfloat16", param_dtype="float32"),
    train=TrainConfig(steps=20000, batch_size=32, seq_len=1024, lr=6e-4, warmup_steps=700, min_lr_ratio=0.1,
                      weight_decay=0.1, grad_clip=1.0, eval_every=500, eval_batches=20, log_every=10,
                      checkpoint_every=1000, keep_checkpoints=3),
    data=DataConfig(kind="shards", path="data/shards"),
)

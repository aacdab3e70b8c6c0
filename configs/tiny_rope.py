"""A tiny RoPE decoder (2 layers, d 128, 4 heads of 32) on the synthetic corpus: 250 steps of 8 x 256
tokens, 1-2 minutes on 2 CPU cores. tiny_nope, tiny_learned and tiny_alibi change only model.position.

The corpus is set to what such a model learns in that time: 1-digit pass keys and no pairs lines
(two-layer induction, needed to copy longer keys, does not form this early; see train/synthetic.py).
With init_std 0.06 and lr 5e-3 it answers 60/60 held-out pass keys and 60/60 facts; with 0.02 and
3e-3, 9/60 and 32/60 (measured at 250 steps). Layers unrolled (scan_layers=False): at 2 layers the
training step is about 20% faster on CPU than the scan (bench/RESULTS.md, 2026-12-02)."""
from minimal_lm import ModelConfig
from train import DataConfig, RunConfig, TrainConfig

CONFIG = RunConfig(
    model=ModelConfig(vocab_size=264, d_model=128, num_layers=2, num_heads=4, max_seq_len=256, position="rope",
                      init_std=0.06, scan_layers=False),
    train=TrainConfig(steps=250, batch_size=8, seq_len=256, lr=5e-3, warmup_steps=25, eval_every=50,
                      eval_batches=4, checkpoint_every=50, keep_checkpoints=4),
    data=DataConfig(kind="synthetic", passkey_digits=1, recall_pairs=0),
)

"""Training: run configs, data (token shards, synthetic corpus), optimizer and step, loop, checkpoints."""
from train.config import DataConfig, RunConfig, TrainConfig, apply_overrides, load_config
from train.loop import NonFiniteLoss, read_metrics, run

__all__ = ["DataConfig", "RunConfig", "TrainConfig", "apply_overrides", "load_config", "NonFiniteLoss",
           "read_metrics", "run"]

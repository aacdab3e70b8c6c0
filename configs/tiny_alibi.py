"""tiny_rope with model.position=alibi."""
from pathlib import Path

from train import apply_overrides, load_config

CONFIG = apply_overrides(load_config(Path(__file__).with_name("tiny_rope.py")), ["model.position=alibi"])

"""tiny_rope with model.position=learned."""
from pathlib import Path

from train import apply_overrides, load_config

CONFIG = apply_overrides(load_config(Path(__file__).with_name("tiny_rope.py")), ["model.position=learned"])

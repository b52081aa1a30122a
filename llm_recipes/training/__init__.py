"""Pretraining on Accelerate primitives: the loop, its schedules, checkpoints, metrics and evaluation.

`llm_recipes.pretrain` is the stage entry point; everything it does lives here:
`loop.pretrain(cfg)` is the training function, `arguments.PretrainConfig` its configuration.
"""

from .arguments import PretrainConfig
from .checkpoint import CheckpointError, find_latest, list_checkpoints, verify_checkpoint
from .schedule import learning_rate_at

__all__ = ["CheckpointError", "PretrainConfig", "find_latest", "learning_rate_at", "list_checkpoints",
           "verify_checkpoint"]

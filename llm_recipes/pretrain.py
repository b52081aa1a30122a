r"""`llm-recipes pretrain`: pretrain a GPT on the cleaned text with Accelerate.

    llm-recipes pretrain --config recipes/quickstart/pretrain.yaml
    accelerate launch --config_file accelerate_config.yaml -m llm_recipes.pretrain \
        --config recipes/quickstart/pretrain.yaml

The loop itself is `llm_recipes.training.loop.pretrain`.
"""

from __future__ import annotations

import sys

from .cli import entry_point
from .config import parse_config
from .pipeline.envelope import StageRun
from .training.arguments import PretrainConfig
from .training.checkpoint import CheckpointError
from .training.data import DataError
from .training.loop import pretrain


def config_classes() -> tuple[type, ...]:
    return (PretrainConfig,)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="pretrain")
    try:
        # the loop starts the envelope once every input has been checked, and completes it
        pretrain(cfg, run=StageRun("pretrain", cfg.output_dir, cfg))
    except (CheckpointError, DataError) as e:
        print(f"llm-recipes pretrain: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("pretrain", main))

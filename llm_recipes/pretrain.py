"""`llm-recipes pretrain`: pretrain a GPT on the cleaned text with Accelerate.

    llm-recipes pretrain --config recipes/quickstart/pretrain.yaml
    accelerate launch --config_file accelerate_config.yaml -m llm_recipes.pretrain --config recipes/quickstart/pretrain.yaml

The loop itself is `llm_recipes.training.loop.pretrain`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from .config import parse_config
    from .training.arguments import PretrainConfig

    # the loop writes resolved_config.yaml once every input has been checked
    (cfg,) = parse_config([PretrainConfig], argv, stage="pretrain")
    from .training.checkpoint import CheckpointError
    from .training.data import DataError
    from .training.loop import pretrain

    try:
        pretrain(cfg)
    except (CheckpointError, DataError) as e:
        print(f"llm-recipes pretrain: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from .launch import entry_point

    sys.exit(entry_point("pretrain", main))

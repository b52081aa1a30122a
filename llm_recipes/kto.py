"""`llm-recipes kto --config recipe.yaml`: KTO with TRL's KTOTrainer from thumbs-up/down feedback
(`prompt`/`completion`/`label`); preference pairs are unpaired into one desirable and one undesirable row.

Also `accelerate launch -m llm_recipes.kto --config recipe.yaml`. Keys: ours (model, data, LoRA; see
`llm_recipes.finetuning.training.FinetuneArguments`) plus TRL's `KTOConfig`. Writes into output_dir:
`final/` (merged HF model folder), `adapter/` (with LoRA), `data/` (train + held-out rows used),
`metrics.jsonl`, `eval_heldout.json`.
"""

from __future__ import annotations

import sys

from .cli import entry_point
from .finetuning import training


def config_classes() -> tuple[type, ...]:
    return training.config_classes("kto")


def main(argv: list[str] | None = None) -> int:
    return training.stage_main("kto", argv)


if __name__ == "__main__":
    sys.exit(entry_point("kto", main))

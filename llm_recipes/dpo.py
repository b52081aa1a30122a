"""`llm-recipes dpo --config recipe.yaml`: direct preference optimization with TRL's DPOTrainer from
`prompt`/`chosen`/`rejected` pairs, full or LoRA (the reference is the input model; with LoRA, the model with the
adapter disabled).

Also `accelerate launch -m llm_recipes.dpo --config recipe.yaml`. Keys: ours (model, data, LoRA; see
`llm_recipes.finetuning.training.FinetuneArguments`) plus TRL's `DPOConfig`. Writes into output_dir:
`final/` (merged HF model folder), `adapter/` (with LoRA), `data/` (train + held-out rows used),
`metrics.jsonl`, `eval_heldout.json`.
"""

from __future__ import annotations

import sys

from .cli import entry_point
from .finetuning import training


def config_classes() -> tuple[type, ...]:
    return training.config_classes("dpo")


def main(argv: list[str] | None = None) -> int:
    return training.stage_main("dpo", argv)


if __name__ == "__main__":
    sys.exit(entry_point("dpo", main))

"""`llm-recipes sft --config recipe.yaml`: supervised fine-tuning with TRL's SFTTrainer: domain text (`text`),
instructions (`prompt`/`completion`) or chats (`messages`, loss on assistant turns only), full or LoRA.

Also `accelerate launch -m llm_recipes.sft --config recipe.yaml`. Keys: ours (model, data, LoRA; see
`llm_recipes.finetuning.training.FinetuneArguments`) plus TRL's `SFTConfig`. Writes into output_dir:
`final/` (merged HF model folder), `adapter/` (with LoRA), `data/` (train + held-out rows used),
`metrics.jsonl`, `eval_heldout.json`.
"""

from __future__ import annotations

import sys

from .cli import entry_point
from .finetuning import training


def config_classes() -> tuple[type, ...]:
    return training.config_classes("sft")


def main(argv: list[str] | None = None) -> int:
    return training.stage_main("sft", argv)


if __name__ == "__main__":
    sys.exit(entry_point("sft", main))

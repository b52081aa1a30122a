"""`llm-recipes sft --config recipe.yaml`: supervised fine-tuning with TRL's SFTTrainer: domain text (`text`), instructions
(`prompt`/`completion`) or chats (`messages`, loss on assistant turns only), full or LoRA.

Also `accelerate launch -m llm_recipes.sft --config recipe.yaml`. Keys: ours (model, data, LoRA; see
`llm_recipes.finetuning.training.FinetuneArguments`) plus TRL's `SFTConfig`. Writes into output_dir:
`final/` (merged HF model folder), `adapter/` (with LoRA), `data/` (train + held-out rows used),
`metrics.jsonl`, `eval_heldout.json`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from trl import SFTConfig

    from .finetuning.training import stage_main

    return stage_main("sft", SFTConfig, argv)


if __name__ == "__main__":
    from .launch import entry_point

    sys.exit(entry_point("sft", main))

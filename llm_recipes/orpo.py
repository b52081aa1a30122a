"""`llm-recipes orpo --config recipe.yaml`: ORPO (odds-ratio preference optimization, TRL's ORPOTrainer) from
`prompt`/`chosen`/`rejected` pairs, full or LoRA: supervised learning on the chosen answer and a preference term
in one loss, with no reference model (half DPO's forward passes).

Also `accelerate launch -m llm_recipes.orpo --config recipe.yaml`. Keys: ours (model, data, LoRA; see
`llm_recipes.finetuning.training.FinetuneArguments`) plus TRL's `ORPOConfig` (`beta` weighs the odds-ratio
term). Writes into output_dir: `final/` (merged HF model folder), `adapter/` (with LoRA), `data/` (train +
held-out rows used), `metrics.jsonl`, `eval_heldout.json`.
"""

from __future__ import annotations

import sys

from .cli import entry_point
from .finetuning import training


def config_classes() -> tuple[type, ...]:
    return training.config_classes("orpo")


def main(argv: list[str] | None = None) -> int:
    return training.stage_main("orpo", argv)


if __name__ == "__main__":
    sys.exit(entry_point("orpo", main))

"""Every fine-tuning recipe parses against its stage's configuration (our keys + TRL's config class)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_recipes.config import parse_config

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
STAGE_RECIPES = sorted(p for stage in ("sft", "dpo", "kto") for p in RECIPES.glob(f"*/{stage}.yaml"))


def test_the_pipeline_recipes_exist():
    names = {str(p.relative_to(RECIPES)) for p in STAGE_RECIPES}
    assert {"quickstart/sft.yaml", "quickstart/dpo.yaml", "debug/sft.yaml", "debug/dpo.yaml",
            "alpaca-ch07/sft.yaml", "alpaca-ch07/dpo.yaml"} <= names


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_recipe_parses(path, monkeypatch):
    from trl import DPOConfig, KTOConfig, SFTConfig

    from llm_recipes.finetuning.training import FinetuneArguments, device_defaults

    monkeypatch.setenv("LLM_RECIPES_RUN_DIR", "runs/x")
    config_class = {"sft": SFTConfig, "dpo": DPOConfig, "kto": KTOConfig}[path.stem]
    args, train_cfg = parse_config([FinetuneArguments, config_class], ["--config", str(path)], stage=path.stem,
                                   defaults=device_defaults())
    assert train_cfg.output_dir == f"runs/x/{path.stem}"
    assert args.model_name_or_path and (args.dataset_name or args.data_files)
    text = path.read_text()
    if "use_cpu:" not in text and "bf16:" not in text:
        # left to the machine: the GPU in bf16 where there is one, the CPU in float32 where there is none
        assert train_cfg.use_cpu == (not torch.cuda.is_available())
        assert train_cfg.bf16 == device_defaults()["bf16"]
    if path.stem == "sft" and args.dataset_name != "text":
        assert train_cfg.assistant_only_loss

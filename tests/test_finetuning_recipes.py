"""Every fine-tuning recipe parses against its stage's configuration (our keys + TRL's config class)."""

from __future__ import annotations

from pathlib import Path

import pytest

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

    from llm_recipes.finetuning.training import FinetuneArguments

    monkeypatch.setenv("LLM_RECIPES_RUN_DIR", "runs/x")
    config_class = {"sft": SFTConfig, "dpo": DPOConfig, "kto": KTOConfig}[path.stem]
    if "use_cpu:" not in path.read_text():
        # a GPU recipe (TRL's bf16 default): TRL refuses to build its config on a machine without bf16,
        # so check the keys against both config classes instead
        from llm_recipes.config import check_keys, load_yaml_config

        check_keys(load_yaml_config(path), [FinetuneArguments, config_class], str(path), path.stem)
        return
    args, train_cfg = parse_config([FinetuneArguments, config_class], ["--config", str(path)], stage=path.stem)
    assert train_cfg.output_dir == f"runs/x/{path.stem}"
    assert args.model_name_or_path and (args.dataset_name or args.data_files)
    # CPU recipes: no bf16 autocast, no GPU needed
    assert train_cfg.use_cpu and not train_cfg.bf16
    if path.stem == "sft" and args.dataset_name != "text":
        assert train_cfg.assistant_only_loss

"""Every shipped recipe YAML parses against its stage's configuration (unknown keys are errors),
and every recipe folder has a README."""

import importlib
import os
from pathlib import Path

import pytest

from llm_recipes.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate")


def stage_config_classes(stage: str) -> list[type]:
    """The config dataclasses a stage parses, looked up the way each stage module declares them."""
    if stage in ("sft", "dpo", "kto"):
        import trl

        from llm_recipes.finetuning.training import FinetuneArguments

        return [FinetuneArguments, getattr(trl, f"{stage.upper()}Config")]
    if stage == "pretrain":
        from llm_recipes.training.arguments import PretrainConfig

        return [PretrainConfig]
    module = importlib.import_module(f"llm_recipes.{stage}")
    classes = [v for k, v in vars(module).items() if k.endswith("Config") and isinstance(v, type)
               and v.__module__ == module.__name__]
    assert len(classes) == 1, f"llm_recipes.{stage} should define one *Config class, found {classes}"
    return classes


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(path, monkeypatch):
    monkeypatch.setenv("LLM_RECIPES_RUN_DIR", "/tmp/llm_recipes_recipe_check")
    # the fine-tuning stages parse with this machine's defaults (no bf16 without a GPU), as `stage_main` does
    from llm_recipes.finetuning.training import device_defaults

    defaults = device_defaults() if path.stem in ("sft", "dpo", "kto") else None
    configs = parse_config(stage_config_classes(path.stem), ["--config", str(path)], stage=path.stem, defaults=defaults)
    output_dir = getattr(configs[-1], "output_dir", None) or getattr(configs[0], "output_dir", None)
    if output_dir is not None:
        assert str(output_dir).startswith("/tmp/llm_recipes_recipe_check"), "recipes write under ${run_dir}"


@pytest.mark.parametrize("folder", sorted(p for p in (ROOT / "recipes").iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_recipe_folder_has_readme(folder):
    assert (folder / "README.md").is_file()

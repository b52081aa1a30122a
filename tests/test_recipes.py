"""Every shipped recipe YAML parses against its stage's configuration (unknown keys are errors),
and every recipe folder has a README."""

from pathlib import Path

import pytest

from llm_recipes.config import parse_config
from llm_recipes.pipeline import stages

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate")


def stage_config_classes(stage: str) -> tuple[type, ...]:
    """The config dataclasses a stage parses, as its entry module exposes them (through the registry)."""
    return stages.stage(stage).config_classes()


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses(path, monkeypatch):
    monkeypatch.setenv("LLM_RECIPES_RUN_DIR", "/tmp/llm_recipes_recipe_check")
    # the fine-tuning stages parse with this machine's defaults (no bf16 without a GPU), as `stage_main` does
    from llm_recipes.finetuning.training import device_defaults

    defaults = device_defaults() if stages.stage(path.stem).kind == stages.FINETUNING else None
    configs = parse_config(stage_config_classes(path.stem), ["--config", str(path)], stage=path.stem,
                           defaults=defaults)
    output_dir = getattr(configs[-1], "output_dir", None) or getattr(configs[0], "output_dir", None)
    if output_dir is not None:
        assert str(output_dir).startswith("/tmp/llm_recipes_recipe_check"), "recipes write under ${run_dir}"


@pytest.mark.parametrize("folder", sorted(p for p in (ROOT / "recipes").iterdir() if p.is_dir()), ids=lambda p: p.name)
def test_recipe_folder_has_readme(folder):
    assert (folder / "README.md").is_file()

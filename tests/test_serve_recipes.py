"""Every deployment recipe parses against its stage's config (unknown keys would be an error)."""

from __future__ import annotations

from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _config_class(stage):
    if stage == "push":
        from llm_recipes.push import PushConfig as cls
    elif stage == "serve":
        from llm_recipes.serve import ServeConfig as cls
    elif stage == "export":
        from llm_recipes.export import ExportConfig as cls
    else:
        from llm_recipes.feedback import FeedbackConfig as cls
    return cls


@pytest.mark.parametrize("kind", ["quickstart", "debug"])
@pytest.mark.parametrize("stage", ["push", "serve", "export", "feedback"])
def test_recipe_parses(kind, stage, monkeypatch):
    from llm_recipes.config import parse_config

    monkeypatch.setenv("LLM_RECIPES_RUN_DIR", f"runs/{kind}")
    (cfg,) = parse_config([_config_class(stage)], ["--config", str(RECIPES / kind / f"{stage}.yaml")], stage=stage)
    assert cfg.output_dir == f"runs/{kind}/{stage}"
    if stage == "push":
        assert cfg.dry_run is True and cfg.model_path == f"runs/{kind}/dpo/final"
    if stage == "serve":
        assert cfg.host == "127.0.0.1" and cfg.model_path == f"runs/{kind}/dpo/final"

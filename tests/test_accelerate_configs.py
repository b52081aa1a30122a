"""The shipped accelerate launch configs load with Accelerate's own config parser."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "accelerate_config.yaml", *sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    config = load_config_from_file(str(path))
    assert config.num_machines == 1
    if path.name == "accelerate_config.yaml":
        assert config.num_processes == 1 and str(config.distributed_type).endswith("NO")
    if path.name == "fsdp2.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
        # the wrap class must be our decoder layer's real name
        from llm_recipes.model.modeling_recipe_gpt import RecipeGPTDecoderLayer

        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == RecipeGPTDecoderLayer.__name__
    if path.name == "deepspeed_zero3.yaml":
        assert config.deepspeed_config["zero_stage"] == 3

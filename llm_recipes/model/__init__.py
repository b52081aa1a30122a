"""RecipeGPT: our decoder-only transformer, registered with the transformers Auto classes."""

from .configuration_recipe_gpt import RecipeGPTConfig
from .modeling_recipe_gpt import RecipeGPTForCausalLM, RecipeGPTModel, RecipeGPTPreTrainedModel
from .presets import PRESETS, config_from_preset

__all__ = ["PRESETS", "RecipeGPTConfig", "RecipeGPTForCausalLM", "RecipeGPTModel", "RecipeGPTPreTrainedModel",
           "config_from_preset"]

"""RecipeGPT: our decoder-only transformer, registered with the transformers Auto classes."""

from .configuration_recipe_gpt import RecipeGPTConfig
from .generation import DEFAULT_MAX_NEW_TOKENS, fitting_max_new_tokens
from .modeling_recipe_gpt import RecipeGPTForCausalLM, RecipeGPTModel, RecipeGPTPreTrainedModel
from .presets import PRESETS, config_from_preset

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "PRESETS", "RecipeGPTConfig", "RecipeGPTForCausalLM", "RecipeGPTModel",
           "RecipeGPTPreTrainedModel", "config_from_preset", "fitting_max_new_tokens"]

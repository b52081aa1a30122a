"""llm_recipes: build a large language model from scratch with the Hugging Face stack.

Importing the package registers RecipeGPT with `AutoConfig` and `AutoModelForCausalLM`, so
`AutoModelForCausalLM.from_pretrained(dir)` works without `trust_remote_code` where llm_recipes is
installed; checkpoints also carry the model code (`auto_map`) for everyone else.
"""

__version__ = "0.1.0"

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .model import RecipeGPTConfig, RecipeGPTForCausalLM, RecipeGPTModel

AutoConfig.register(RecipeGPTConfig.model_type, RecipeGPTConfig, exist_ok=True)
AutoModel.register(RecipeGPTConfig, RecipeGPTModel, exist_ok=True)
AutoModelForCausalLM.register(RecipeGPTConfig, RecipeGPTForCausalLM, exist_ok=True)
# save_pretrained then writes auto_map and copies the two model files next to the weights
RecipeGPTConfig.register_for_auto_class()
RecipeGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["RecipeGPTConfig", "RecipeGPTForCausalLM", "RecipeGPTModel", "__version__"]

"""llm_recipes: build a large language model from scratch with the Hugging Face stack.

Importing the package registers RecipeGPT with `AutoConfig` and `AutoModelForCausalLM`, so
`AutoModelForCausalLM.from_pretrained(dir)` works without `trust_remote_code` where llm_recipes is
installed; checkpoints also carry the model code (`auto_map`) for everyone else.

The registration waits until transformers' Auto classes are imported: registering needs the model
classes, and importing them imports torch (~4 s, ~400 MB), which a data worker (`import
llm_recipes.data...`, on a local process or a Ray node) never uses. So this module imports neither:
if the Auto classes are already loaded it registers now, otherwise an import hook registers as soon as
an import that loads them has finished, before any of them can be called.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

# the modules that define AutoConfig and AutoModel*: every from_pretrained of an Auto class goes through them
_AUTO_MODULES = ("transformers.models.auto.configuration_auto", "transformers.models.auto.modeling_auto")
_MODEL_NAMES = ("RecipeGPTConfig", "RecipeGPTForCausalLM", "RecipeGPTModel")
_MODEL_PACKAGE = f"{__name__}.model"
_registered = False


def register_auto_classes() -> None:
    """Registers RecipeGPT with transformers' Auto classes (once; imports torch)."""
    global _registered
    if _registered:
        return
    _registered = True  # first: the imports below are not watched
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .model import RecipeGPTConfig, RecipeGPTForCausalLM, RecipeGPTModel

    AutoConfig.register(RecipeGPTConfig.model_type, RecipeGPTConfig, exist_ok=True)
    AutoModel.register(RecipeGPTConfig, RecipeGPTModel, exist_ok=True)
    AutoModelForCausalLM.register(RecipeGPTConfig, RecipeGPTForCausalLM, exist_ok=True)
    # save_pretrained then writes auto_map and copies the two model files next to the weights
    RecipeGPTConfig.register_for_auto_class()
    RecipeGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")


class _TransformersLoader:
    """The real loader of a transformers module (or of our model package); once the outermost such import
    in progress has finished and the Auto classes are loaded, registers. Not in the middle: transformers
    imports its modules in cycles, our model package imports transformers, and the model classes cannot be
    imported while either is half loaded."""

    depth = 0  # watched modules being executed, nested

    def __init__(self, loader):
        self.loader = loader

    def __getattr__(self, name):  # get_source, get_resource_reader, is_package...: the real loader's
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        _TransformersLoader.depth += 1
        try:
            self.loader.exec_module(module)
        finally:
            _TransformersLoader.depth -= 1
        if not _TransformersLoader.depth and any(name in sys.modules for name in _AUTO_MODULES):
            register_auto_classes()


class _AutoClassesHook(importlib.abc.MetaPathFinder):
    """Watches transformers' imports until RecipeGPT is registered."""

    def find_spec(self, fullname, path, target=None):
        watched = fullname.partition(".")[0] == "transformers" or fullname == _MODEL_PACKAGE or \
            fullname.startswith(_MODEL_PACKAGE + ".")
        if _registered or not watched:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _TransformersLoader(spec.loader)
        return spec


if any(name in sys.modules for name in _AUTO_MODULES):
    register_auto_classes()
elif not any(type(finder).__name__ == "_AutoClassesHook" for finder in sys.meta_path):
    sys.meta_path.insert(0, _AutoClassesHook())


def __getattr__(name: str):
    # `from llm_recipes import RecipeGPTConfig` keeps working; it loads the model (and torch) on first use
    if name in _MODEL_NAMES:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'llm_recipes' has no attribute {name!r}")


__all__ = ["RecipeGPTConfig", "RecipeGPTForCausalLM", "RecipeGPTModel", "__version__", "register_auto_classes"]

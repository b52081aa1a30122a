"""Loading a causal LM and its tokenizer for scoring, with errors that say what is missing."""

from __future__ import annotations

import os
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class EvalInputError(ValueError):
    """An evaluation input (model folder, data file, task) that cannot be used as given."""


def resolve_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        # bf16 halves memory and time on GPUs; CPU matmuls in bf16 are slower than fp32 on most chips
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise EvalInputError(f"torch_dtype {name!r} is not supported; expected auto, float32, bfloat16 or float16")
    return dtypes[name]


def check_model_dir(model_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> None:
    """Raises EvalInputError when a local model folder lacks weights/config or a tokenizer.

    A path that is not a local folder is taken as a Hub id and left to `from_pretrained`.
    """
    path = Path(model_path)
    if not path.exists():
        text = str(model_path)
        # "gpt2" and "org/name" are Hub ids; anything else that is missing is a wrong local path
        if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
            raise EvalInputError(f"model folder {str(model_path)!r} does not exist")
        return  # a Hub id such as "gpt2" or "org/name"
    if not path.is_dir():
        raise EvalInputError(f"model path {str(model_path)!r} is a file; expected a model folder with config.json")
    if not (path / "config.json").is_file():
        raise EvalInputError(f"model folder {str(path)!r} has no config.json; expected a folder written by "
                             "save_pretrained (pretrain/final, sft/final, ...)")
    if tokenizer_path is None and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise EvalInputError(
            f"model folder {str(path)!r} has no tokenizer ({', '.join(TOKENIZER_FILES)} all missing); save the "
            "tokenizer next to the weights or set tokenizer_name_or_path")


def load_model_and_tokenizer(model_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
                             device: str = "auto", torch_dtype: str = "auto", trust_remote_code: bool = True):
    """Loads any `AutoModelForCausalLM` (ours or stock) in eval mode, plus its tokenizer.

    Args:
        model_path: local model folder or Hub id.
        tokenizer_path: where the tokenizer lives when the model folder has none (e.g. a checkpoint).
        device: "auto", "cpu", "cuda", ...
        torch_dtype: "auto", "float32", "bfloat16" or "float16".
        trust_remote_code: allow the model code saved next to the weights (our checkpoints carry it).

    Returns:
        (model, tokenizer, device)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llm_recipes  # noqa: F401  registers RecipeGPT, so our folders load without remote code

    check_model_dir(model_path, tokenizer_path)
    device = resolve_device(device)
    dtype = resolve_dtype(torch_dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or model_path), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype, trust_remote_code=trust_remote_code)
    model.to(device).eval()
    return model, tokenizer, device


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())

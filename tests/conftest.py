"""Shared fixtures: a real tiny tokenizer and a tiny RecipeGPT, built once per test session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

# Hypothesis-driven fuzzing (configs, the server's OpenAPI schema): random examples on every local run, the
# same examples in CI (a CI run must not fail on a draw no one can reproduce; run locally to explore)
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    if os.environ.get("CI"):
        _hypothesis_settings.load_profile("ci")
except ImportError:
    pass

def pytest_xdist_auto_num_workers(config):
    """`-n auto`: a worker per CPU this process may use (its affinity: a container's or taskset's share, not the
    machine's count), at most 8 to bound memory: every worker holds torch and the session's tiny models, and many
    tests start servers or training processes of their own (measured only on 2 CPUs)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or a clean skip where that folder is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data {relative} not available")
    return path


def tiny_corpus() -> list[str]:
    """Real English technical prose that every Python installation ships: the pydoc topics."""
    import pydoc_data.topics

    return [text for text in pydoc_data.topics.topics.values() if len(text) > 200]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe

    path = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_bpe(tiny_corpus(), vocab_size=512, model_max_length=256), path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def make_tiny_config(vocab_size: int = 512, **overrides):
    from llm_recipes.model import RecipeGPTConfig

    kwargs = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    kwargs.update(overrides)
    return RecipeGPTConfig(**kwargs)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny RecipeGPT (random weights) with its tokenizer and generation config: loads with
    plain transformers, like every model folder the stages write."""
    import torch
    from transformers import GenerationConfig

    import llm_recipes  # noqa: F401  (registers the model)
    from llm_recipes.model import RecipeGPTForCausalLM
    from llm_recipes.tokenizer.bpe import end_of_turn_token_ids, save_tokenizer

    torch.manual_seed(0)
    config = make_tiny_config(len(tiny_tokenizer), bos_token_id=tiny_tokenizer.bos_token_id,
                              eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    model = RecipeGPTForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tiny_tokenizer.bos_token_id,
                                               eos_token_id=end_of_turn_token_ids(tiny_tokenizer),
                                               pad_token_id=tiny_tokenizer.pad_token_id, max_new_tokens=32)
    path = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(path)
    save_tokenizer(tiny_tokenizer, path)
    return path

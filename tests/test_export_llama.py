"""`llm-recipes export --to llama`: a plain LlamaForCausalLM with the very same logits, or a clear refusal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _save_model(path, tokenizer_dir, vocab_size=512, **overrides):
    import shutil

    import torch
    from conftest import make_tiny_config

    from llm_recipes.model import RecipeGPTForCausalLM

    torch.manual_seed(1)
    model = RecipeGPTForCausalLM(make_tiny_config(vocab_size, **overrides))
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_dir / name, path / name)
    return model


# runs in a fresh interpreter that never imports llm_recipes: what vLLM/TGI-style loaders see
LOAD_PLAIN = """
import json, sys, torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM
path, ids = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(path)  # no trust_remote_code
assert type(model) is LlamaForCausalLM, type(model)
assert "llm_recipes" not in sys.modules
with torch.inference_mode():
    logits = model(torch.tensor(ids)).logits
    generated = model.generate(torch.tensor(ids[:1]), max_new_tokens=8, do_sample=False, eos_token_id=None)
torch.save({"logits": logits, "generated": generated}, path + "/../probe.pt")
"""


# the fresh-interpreter check costs ~10 s of imports: once is enough, the untied case loads in-process
@pytest.mark.parametrize("tied,fresh_process", [(True, True), (False, False)])
def test_export_gives_identical_logits(tmp_path, tiny_tokenizer_dir, tied, fresh_process):
    import torch

    from llm_recipes.cli import main

    source = tmp_path / "model"
    model = _save_model(source, tiny_tokenizer_dir, tie_word_embeddings=tied, rope_theta=500000.0)
    out = tmp_path / "llama"
    assert main(["export", str(source), "--to", "llama", "--output_dir", str(out)]) == 0

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert config["rope_theta"] == 500000.0 and config["tie_word_embeddings"] is tied
    assert not list(out.glob("*.py"))  # no custom code travels with it
    assert (out / "tokenizer.json").is_file() and (out / "stage_complete.json").is_file()

    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(3)).tolist()
    if fresh_process:
        subprocess.run([sys.executable, "-c", LOAD_PLAIN, str(out), json.dumps(ids)], check=True, timeout=120)
        probe = torch.load(tmp_path / "probe.pt")
    else:
        from transformers import LlamaForCausalLM

        llama = LlamaForCausalLM.from_pretrained(out).eval()
        with torch.inference_mode():
            probe = {"logits": llama(torch.tensor(ids)).logits,
                     "generated": llama.generate(torch.tensor(ids[:1]), max_new_tokens=8, do_sample=False,
                                                 eos_token_id=None)}
    model.eval()
    with torch.inference_mode():
        expected = model(torch.tensor(ids)).logits
        generated = model.generate(torch.tensor(ids[:1]), max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(probe["logits"], expected)
    assert torch.equal(probe["generated"], generated)


def test_export_refuses_what_llama_cannot_represent(tmp_path, tiny_tokenizer_dir, capsys):
    from llm_recipes.cli import main

    source = tmp_path / "qk"
    _save_model(source, tiny_tokenizer_dir, qk_norm=True)
    out = tmp_path / "out"
    assert main(["export", str(source), "--to", "llama", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "qk_norm" in err and "cannot represent" in err
    assert not out.exists()  # nothing half-written
    assert main(["export", str(tmp_path / "missing"), "--output_dir", str(out)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["export", str(source), "--to", "onnx"]) == 2
    assert "gguf" in capsys.readouterr().err


@pytest.mark.parametrize("rope_parameters", [
    {"rope_type": "linear", "factor": 2.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    {"rope_type": "llama3", "factor": 4.0, "original_max_position_embeddings": 16},
])
def test_scaled_rope_travels_into_the_llama_export(tmp_path, tiny_tokenizer_dir, rope_parameters):
    import torch
    from transformers import LlamaForCausalLM

    from llm_recipes.cli import main

    # 40 tokens past a 32-position context: the dynamic type rescales, the others stretch by their factor
    model = _save_model(tmp_path / "model", tiny_tokenizer_dir, max_position_embeddings=32,
                        rope_parameters=rope_parameters).eval()
    assert main(["export", str(tmp_path / "model"), "--to", "llama", "--output_dir", str(tmp_path / "llama")]) == 0
    saved = json.loads((tmp_path / "llama" / "config.json").read_text())["rope_parameters"]
    assert {k: saved[k] for k in rope_parameters} == rope_parameters
    llama = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(llama(ids).logits, model(ids).logits, rtol=0, atol=1e-5)

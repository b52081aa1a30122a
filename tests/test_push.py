"""`llm-recipes push` against a local stand-in of the Hub's upload API: the exact files and card received."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hub_standin import create_hub_app

TOKEN = "hf_standin_write_token"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _push(args, endpoint, tmp_path, token=TOKEN):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO_ROOT))
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "llm_recipes.cli", "push", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture()
def model_folder(tiny_model_dir, tmp_path):
    """A model folder as fine-tuning leaves it: use_cache off, no eos in generation_config, a model-index
    from `llm-recipes evaluate`, and the stage's files next to it."""
    from llm_recipes.publishing.model_card import update_model_index

    stage = tmp_path / "sft"
    folder = stage / "final"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["use_cache"] = False
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "max_new_tokens": 32}))
    (folder / "optimizer.pt").write_bytes(b"not for the hub")
    update_model_index(folder, [{"task_type": "text-generation", "dataset_type": "python-docs",
                                 "dataset_name": "python docs held-out", "metric_type": "bits_per_byte",
                                 "metric_value": 1.91}], model_name="tiny-chat")
    (stage / "resolved_config.yaml").write_text("learning_rate: 0.0003\nmax_steps: 100\n")
    (stage / "run_info.json").write_text(json.dumps({"stage": "sft", "versions": {"transformers": "5.24.0"}}))
    (stage / "metrics.jsonl").write_text(json.dumps({"step": 100, "loss": 2.5, "eval_loss": 2.75}) + "\n")
    results = tmp_path / "eval_results.json"
    results.write_text(json.dumps({"models": {
        "sft": {"path": str(folder), "results": {"heldout": {"bits_per_byte": 1.91, "seconds": 3.0}}},
        "pretrain": {"path": "/elsewhere", "results": {"heldout": {"bits_per_byte": 2.2}}}}, "tasks": {}}))
    return folder, results


def test_push_uploads_exact_files_and_card(model_folder, tmp_path):
    from llm_recipes.serving.runner import ServerThread

    folder, results = model_folder
    hub = create_hub_app(TOKEN)
    with ServerThread(hub) as server:
        done = _push([str(folder), "--repo_id", "alice/tiny-chat", "--private", "true", "--output_dir",
                      str(tmp_path / "push"), "--datasets", "alice/python-docs", "--eval_results", str(results)],
                     server.url, tmp_path)
        assert done.returncode == 0, done.stderr
    repo = hub.state.repos["alice/tiny-chat"]
    assert repo["private"] is True and repo["type"] == "model"
    assert len(repo["commits"]) == 1  # one commit: the repository is never half-updated
    assert sorted(repo["files"]) == ["README.md", "chat_template.jinja", "config.json", "configuration_recipe_gpt.py",
                                     "eval_results.json", "generation_config.json", "model.safetensors",
                                     "modeling_recipe_gpt.py", "tokenizer.json", "tokenizer_config.json"]
    assert [path for _, path, _ in hub.state.requests] == [
        "/api/repos/create", "/api/validate-yaml", "/api/models/alice/tiny-chat/preupload/main",
        "/api/models/alice/tiny-chat/commit/main"]
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth in hub.state.requests), hub.state.requests
    for name in ("model.safetensors", "tokenizer.json", "modeling_recipe_gpt.py"):
        assert repo["files"][name] == (folder / name).read_bytes()

    config = json.loads(repo["files"]["config.json"])
    assert config["use_cache"] is True and "AutoModelForCausalLM" in config["auto_map"]
    generation = json.loads(repo["files"]["generation_config.json"])
    assert generation["eos_token_id"] == [1, 4]  # end of text and end of turn

    card = repo["files"]["README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-generation"
    assert meta["datasets"] == ["alice/python-docs"] and meta["library_name"] == "transformers"
    assert {"custom_code", "llm-recipes", "recipe_gpt"} <= set(meta["tags"]) and "llm_recipes" not in meta["tags"]
    # the model-index written by `llm-recipes evaluate` survives the push untouched
    index = meta["model-index"][0]
    assert index["name"] == "tiny-chat"
    assert index["results"][0]["metrics"][0] == {"type": "bits_per_byte", "value": 1.91}
    assert "| **sft** (this model) | 1.91 |" in card and "| pretrain | 2.2 |" in card
    assert 'pipeline("text-generation", model="alice/tiny-chat", trust_remote_code=True)' in card
    for section in ("## Intended use", "## Limitations", "## Training", "## Evaluation", "learning_rate: 0.0003",
                    "eval_loss 2.75"):
        assert section in card
    staged = tmp_path / "push" / "upload"
    assert (tmp_path / "push" / "stage_complete.json").is_file()
    assert json.loads((tmp_path / "push" / "push_result.json").read_text())["commit_url"].startswith(server.url)

    # the card's usage snippet works on what was uploaded
    from transformers import pipeline

    import llm_recipes  # noqa: F401

    generator = pipeline("text-generation", model=str(staged))
    out = generator([{"role": "user", "content": "How do I join two paths?"}], max_new_tokens=8)
    assert out[0]["generated_text"][-1]["role"] == "assistant"


def test_push_dry_run_and_bad_input(model_folder, tmp_path, monkeypatch, capsys):
    folder, _ = model_folder
    from llm_recipes.cli import main

    assert main(["push", str(folder), "--repo_id", "alice/x", "--dry_run", "true", "--output_dir",
                 str(tmp_path / "dry")]) == 0
    assert (tmp_path / "dry" / "upload" / "README.md").is_file()
    assert not (tmp_path / "dry" / "upload" / "optimizer.pt").exists()
    # without --output_dir a stage's final/ model is staged beside its run: run/dpo/final -> run/push
    import shutil

    staged_model = shutil.copytree(folder, tmp_path / "run" / "dpo" / "final")
    assert main(["push", str(staged_model), "--repo_id", "alice/x", "--dry_run", "true"]) == 0
    assert (tmp_path / "run" / "push" / "upload" / "model.safetensors").is_file()
    assert main(["push", str(folder), "--repo_id", "no-slash", "--dry_run", "true"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / "pytorch_model.bin").write_bytes(b"x")
    assert main(["push", str(empty), "--repo_id", "alice/x", "--dry_run", "true", "--output_dir",
                 str(tmp_path / "e")]) == 2
    # a folder saved before auto_map named AutoModel: vLLM could not build it, so push says what to add
    old_folder = shutil.copytree(folder, tmp_path / "old")
    config = json.loads((old_folder / "config.json").read_text())
    del config["auto_map"]["AutoModel"]
    (old_folder / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["push", str(old_folder), "--repo_id", "alice/x", "--dry_run", "true", "--output_dir",
                 str(tmp_path / "o")]) == 2
    assert 'auto_map lacks AutoModel' in capsys.readouterr().err and not (tmp_path / "o" / "upload").exists()

    # the upload path in-process (a subprocess per case costs ~10 s of imports): online, no stored login
    from huggingface_hub import constants

    from llm_recipes.serving.runner import ServerThread

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_here"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = create_hub_app(TOKEN)
    with ServerThread(hub) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert main(["push", str(folder), "--repo_id", "alice/x", "--output_dir", str(tmp_path / "p1")]) == 2
        assert "no Hugging Face token" in capsys.readouterr().err
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        assert main(["push", str(folder), "--repo_id", "alice/x", "--output_dir", str(tmp_path / "p2")]) == 1
        assert "401" in capsys.readouterr().err
    assert hub.state.repos == {}
    assert not (tmp_path / "p2" / "stage_complete.json").exists()

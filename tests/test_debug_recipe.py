"""The whole pipeline, end to end, on the debug recipe: every stage's artifacts and the report card.

This is the slowest test (a couple of minutes on 2 cores): it runs `llm-recipes run recipes/debug`
exactly as a user would, in a subprocess, offline.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("debug_run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "llm_recipes", "run", "recipes/debug", "--run_dir", str(run_dir)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return run_dir, out.stdout


def test_every_stage_completed(debug_run):
    run_dir, stdout = debug_run
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert list(summary["stages"]) == ["gather", "clean", "train_tokenizer", "pretrain", "sft", "dpo", "evaluate",
                                       "push", "export"]
    for name, info in summary["stages"].items():
        output_dir = Path(info["output_dir"])
        assert (output_dir / "stage_complete.json").is_file(), name
        assert (output_dir / "resolved_config.yaml").is_file(), name
        assert (run_dir / "logs" / f"{name}.log").is_file(), name


def test_artifacts_load_with_plain_libraries(debug_run):
    run_dir, _ = debug_run
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clean = datasets.load_dataset("parquet", data_files={"train": str(run_dir / "clean/train/*.parquet"),
                                                         "validation": str(run_dir / "clean/validation/*.parquet")})
    assert len(clean["train"]) > 0 and len(clean["validation"]) > 0
    assert {"text", "source", "location", "title"} <= set(clean["train"].column_names)
    assert (run_dir / "clean" / "report.md").is_file() and (run_dir / "clean" / "report.png").is_file()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    assert tokenizer.chat_template and "generation" in tokenizer.chat_template
    for stage in ("pretrain", "sft", "dpo"):
        final = run_dir / stage / "final"
        assert (final / "model.safetensors").is_file() and (final / "modeling_recipe_gpt.py").is_file(), stage
        model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
        assert model.generation_config.eos_token_id is not None
        # vLLM's Transformers backend builds AutoModel.from_config: every saved folder names it
        auto_map = json.loads((final / "config.json").read_text())["auto_map"]
        assert {"AutoConfig", "AutoModel", "AutoModelForCausalLM"} <= set(auto_map), stage
        assert model.generation_config.max_new_tokens <= model.config.max_position_embeddings // 2, stage
    results = json.loads((run_dir / "evaluate" / "eval_results.json").read_text())
    assert results
    assert (run_dir / "evaluate" / "comparison.md").is_file()


def test_hub_ready_folder_and_llama_export(debug_run):
    run_dir, _ = debug_run
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    upload = run_dir / "push" / "upload"
    card = (upload / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "custom_code" in card
    assert AutoTokenizer.from_pretrained(upload) is not None
    assert AutoModelForCausalLM.from_pretrained(upload, trust_remote_code=True).generation_config.eos_token_id
    llama = AutoModelForCausalLM.from_pretrained(run_dir / "export")
    assert isinstance(llama, LlamaForCausalLM)


def test_model_card_the_hub_renders(debug_run, tmp_path):
    """The card `push` prepares, read back with the Hub library's own parser (strict: invalid metadata or
    model-index raises), with and without --eval_results: a real model name, dataset ids instead of paths, the
    corpus described, training details, numbers with item counts, one tag spelling, generation that fits."""
    import subprocess

    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results
    from transformers import GenerationConfig

    run_dir, _ = debug_run
    cards = {"recipe": run_dir / "push" / "upload" / "README.md"}
    # the same folder pushed without --eval_results: the numbers come from the run's own evaluate stage
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "llm_recipes", "push", str(run_dir / "dpo" / "final"), "--repo_id",
                    "alice/debug-dpo", "--dry_run", "true", "--output_dir", str(tmp_path / "push")],
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=300)
    cards["plain"] = tmp_path / "push" / "upload" / "README.md"
    context = json.loads((run_dir / "dpo" / "final" / "config.json").read_text())["max_position_embeddings"]
    for kind, path in cards.items():
        card = ModelCard.load(path, ignore_metadata_errors=False)
        data = card.data
        name, results = model_index_to_eval_results(data.to_dict()["model-index"])
        assert name == data.model_name == {"recipe": "python-docs-gpt-debug", "plain": "debug-dpo"}[kind]
        assert results and all(not r.dataset_type.startswith("/") and str(run_dir) not in r.dataset_type
                               for r in results), (kind, [r.dataset_type for r in results])
        assert "llm-recipes" in data.tags and "llm_recipes" not in data.tags
        body = card.text
        assert "## Training data" in body and "python-docs" in body and "documents kept" in body
        assert ("`llm-recipes pretrain`: 20 steps, 10,240 tokens" in body and "wall time" in body
                and "CPU cores" in body)
        assert "## Evaluation" in body and "(8 items)" in body and "**dpo** (this model)" in body, kind
        snippet = int(body.split("max_new_tokens=")[1].split(")")[0])
        assert snippet <= context // 2
        generation = GenerationConfig.from_pretrained(path.parent)
        assert generation.max_new_tokens <= context // 2


def test_pipeline_with_defaults_stays_inside_the_context(debug_run):
    from transformers import AutoTokenizer, pipeline

    run_dir, _ = debug_run
    folder = run_dir / "push" / "upload"
    generator = pipeline("text-generation", model=str(folder), trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    context = generator.model.config.max_position_embeddings
    messages = [{"role": "user", "content": "How do I join two paths in Python?"}]
    out = generator(messages, do_sample=False)[0]["generated_text"]
    total = len(tokenizer.apply_chat_template(out, tokenize=True))
    assert total <= context, (total, context)


def test_report_card(debug_run):
    run_dir, stdout = debug_run
    report = (run_dir / "report.md").read_text()
    for heading in ("## Stages", "## Cleaning", "## Tokenizer", "## Pretraining", "## Evaluation",
                    "## Sample generations", "## Versions", "## Configs"):
        assert heading in report, heading
    assert (run_dir / "report_loss.png").is_file()
    assert f"everything is in {run_dir}" in stdout


def test_rerun_skips_finished_stages(debug_run):
    run_dir, _ = debug_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "llm_recipes", "run", "recipes/debug", "--run_dir", str(run_dir),
                          "--no_report"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("skipped (--force redoes it)") == 9


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_training_stage_under_accelerate_launch(debug_run, tmp_path, stage):
    """The README's other way to start a training stage: `accelerate launch --config_file accelerate_config.yaml
    -m llm_recipes.<stage> --config ...`, on the debug run's data, with a CLI override of output_dir."""
    run_dir, _ = debug_run
    out_dir = tmp_path / stage
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "LLM_RECIPES_RUN_DIR": str(run_dir)}
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch",
                          "--config_file", "accelerate_config.yaml", "-m", f"llm_recipes.{stage}",
                          "--config", f"recipes/debug/{stage}.yaml", "--output_dir", str(out_dir), "--max_steps", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (out_dir / "stage_complete.json").is_file() and (out_dir / "final" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    import llm_recipes  # noqa: F401  (registers the model in this process: no remote code, no prompt)

    assert AutoModelForCausalLM.from_pretrained(out_dir / "final").config.model_type == "recipe_gpt"

"""`llm-recipes orpo`: the preference method added as one row of the methods table (issue 19), on a tiny
RecipeGPT, directly and under `accelerate launch`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from finetuning_helpers import logged_losses, preference_rows, read_tensors, stage_argv

from llm_recipes import orpo

ROOT = Path(__file__).resolve().parent.parent


def _preferences(tmp_path, n=24) -> Path:
    from datasets import Dataset

    data = tmp_path / "prefs.jsonl"
    Dataset.from_list(preference_rows(n)).to_json(str(data))
    return data


def test_orpo_trains_and_learns_the_preference(tiny_model_dir, tmp_path):
    """Chosen: the right sum; rejected: a refusal. A few full ORPO steps at a high rate raise the held-out margin
    log p(chosen) - log p(rejected) above the base model's; the record is the preference record DPO writes."""
    out = tmp_path / "orpo"
    rc = orpo.main(stage_argv(tiny_model_dir, out, dataset_name=_preferences(tmp_path), max_steps=6,
                              learning_rate=5e-3, heldout_fraction=0.25, beta=0.1))
    assert rc == 0
    losses = logged_losses(out)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    before, after = read_tensors(tiny_model_dir / "model.safetensors"), read_tensors(out / "final/model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)
    record = json.loads((out / "eval_heldout.json").read_text())
    assert record["stage"] == "orpo" and record["metric"] == "preference_accuracy" and record["higher_is_better"]
    assert record["trained"]["mean_logp_margin"] > record["base"]["mean_logp_margin"]
    complete = json.loads((out / "stage_complete.json").read_text())
    assert complete["stage"] == "orpo" and complete["train_rows"] > 0
    assert "ORPOConfig" not in (out / "resolved_config.yaml").read_text() and \
        "beta: 0.1" in (out / "resolved_config.yaml").read_text()


def test_orpo_refuses_sft_data(tiny_model_dir, tmp_path, capsys):
    from datasets import Dataset

    data = tmp_path / "chats.jsonl"
    Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
                      ).to_json(str(data))
    assert orpo.main(stage_argv(tiny_model_dir, tmp_path / "o", dataset_name=data)) == 2
    assert "do not fit stage 'orpo'; expected columns prompt/chosen/rejected" in capsys.readouterr().err


def test_orpo_under_accelerate_launch_and_the_cli(tiny_model_dir, tmp_path):
    """`accelerate launch -m llm_recipes.orpo` and `llm-recipes orpo` run the same stage (one CPU process each)."""
    data = _preferences(tmp_path, 12)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    commands = {
        "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
                       "-m", "llm_recipes.orpo"],
        "cli": [sys.executable, "-m", "llm_recipes", "orpo"],
    }
    for name, command in commands.items():
        out = tmp_path / f"orpo-{name}"
        argv = stage_argv(tiny_model_dir, out, dataset_name=data, heldout_fraction=0.0, evaluate_heldout="false")
        done = subprocess.run(command + argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, name + done.stdout[-2000:] + done.stderr[-2000:]
        assert (out / "final" / "model.safetensors").is_file() and (out / "stage_complete.json").is_file(), name

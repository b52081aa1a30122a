"""`llm-recipes dpo`: full and LoRA DPO on a tiny RecipeGPT, the reward-accuracy record, bad input."""

from __future__ import annotations

import json
import math

from finetuning_helpers import logged_losses, preference_rows, read_tensors, stage_argv, write_clean_folder

from llm_recipes import dpo


def test_full_dpo_on_python_docs_preferences(tiny_model_dir, tmp_path):
    clean = write_clean_folder(tmp_path / "clean")
    out = tmp_path / "dpo"
    rc = dpo.main(stage_argv(tiny_model_dir, out, dataset_name="python-docs-preferences", corpus_path=clean,
                             heldout_fraction=0.25, beta=0.1))
    assert rc == 0
    losses = logged_losses(out)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    before, after = read_tensors(tiny_model_dir / "model.safetensors"), read_tensors(out / "final/model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)

    record = json.loads((out / "eval_heldout.json").read_text())
    assert record["stage"] == "dpo" and record["metric"] == "preference_accuracy" and record["higher_is_better"]
    held = (out / "data/heldout.jsonl").read_text().splitlines()
    assert record["base"]["pairs"] == len(held) == record["trained"]["pairs"]
    assert "reward_accuracy" in record["trained"] and "reward_accuracy" not in record["base"]
    assert 0.0 <= record["trained"]["reward_accuracy"] <= 1.0
    row = json.loads(held[0])
    assert set(row) == {"prompt", "chosen", "rejected"} and row["chosen"] != row["rejected"]


def test_lora_dpo_learns_the_preference(tiny_model_dir, tmp_path):
    """Chosen: the right sum; rejected: a refusal. After a few LoRA steps at a high rate the DPO model prefers the
    chosen answer on held-out pairs more than the reference does (implicit reward accuracy above chance)."""
    from datasets import Dataset

    data = tmp_path / "prefs.jsonl"
    Dataset.from_list(preference_rows(24)).to_json(str(data))
    out = tmp_path / "dpo-lora"
    rc = dpo.main(stage_argv(tiny_model_dir, out, dataset_name=data, use_peft="true", lora_r=8, max_steps=6,
                             learning_rate=5e-3, heldout_fraction=0.25))
    assert rc == 0
    adapter = read_tensors(out / "adapter/adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    record = json.loads((out / "eval_heldout.json").read_text())
    assert record["trained"]["reward_accuracy"] == 1.0 and record["trained"]["mean_reward_margin"] > 0
    assert record["trained"]["mean_logp_margin"] > record["base"]["mean_logp_margin"]


def test_dpo_rejects_sft_data(tiny_model_dir, tmp_path, capsys):
    from datasets import Dataset

    data = tmp_path / "chats.jsonl"
    Dataset.from_list([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}] * 3
                      ).to_json(str(data))
    assert dpo.main(stage_argv(tiny_model_dir, tmp_path / "o", dataset_name=data)) == 2
    assert "do not fit stage 'dpo'; expected columns prompt/chosen/rejected" in capsys.readouterr().err

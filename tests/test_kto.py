"""`llm-recipes kto`: KTO from thumbs-up/down rows (as a feedback store exports them) on a tiny RecipeGPT."""

from __future__ import annotations

import json
import math

from finetuning_helpers import logged_losses, read_tensors, stage_argv

from llm_recipes import kto


def test_kto_from_feedback_rows_runs_and_records_heldout(tiny_model_dir, tmp_path):
    rows = []
    for i in range(16):
        prompt = [{"role": "user", "content": f"What is {i} plus {i}?"}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": f"It is {2 * i}."}],
                     "label": "up"})
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": "Go away."}], "label": "down"})
    data = tmp_path / "feedback.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "kto"
    rc = kto.main(stage_argv(tiny_model_dir, out, dataset_name=data, heldout_fraction=0.25))
    assert rc == 0
    losses = logged_losses(out)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    before, after = read_tensors(tiny_model_dir / "model.safetensors"), read_tensors(out / "final/model.safetensors")
    assert any(not before[k].equal(after[k]) for k in before)
    record = json.loads((out / "eval_heldout.json").read_text())
    assert record["stage"] == "kto" and record["metric"] == "desirable_logp_gap"
    assert record["base"]["desirable"] + record["base"]["undesirable"] == 8
    assert "reward_label_accuracy" in record["trained"]
    train = [json.loads(line) for line in (out / "data/train.jsonl").read_text().splitlines()]
    assert {r["label"] for r in train} == {True, False}  # words parsed into booleans

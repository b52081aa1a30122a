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
                             heldout_fraction=0.25, beta=0.1, torch_num_threads=1))
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
    # threads: a recipe's torch_num_threads is used as is, and recorded with the steps trained
    done = json.loads((out / "stage_complete.json").read_text())
    assert done["torch_num_threads"] == 1 and done["steps"] == 2 and "cpu" not in done


def test_text_mix_is_for_packed_sft_only(tiny_model_dir, tmp_path):
    import pytest

    from llm_recipes.config import ConfigError

    with pytest.raises(ConfigError, match="text_mix_fraction is for sft with packing: true.*'dpo' packs nothing"):
        dpo.main(stage_argv(tiny_model_dir, tmp_path / "o", dataset_name="x.jsonl", text_mix_fraction=0.5))


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


def _greedy_answers(model_dir, prompts, max_new_tokens):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_recipes.evaluation.scoring import LMScorer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return LMScorer(model.eval(), tokenizer, progress=False).generate(texts, max_new_tokens)


def test_model_answers_replace_rejected_and_undesirable_completions(tiny_model_dir):
    """preference_negatives: model: DPO's rejected side and KTO's thumbs-down completions become the model's
    own greedy answers; pairs whose answer already equals the chosen one are dropped; strings stay strings."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_recipes.finetuning.training import model_answers_as_negatives

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(4)]
    own = _greedy_answers(tiny_model_dir, prompts, 6)
    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": f"It is {2 * i}."}],
             "rejected": [{"role": "assistant", "content": "Go away."}]} for i, p in enumerate(prompts)]
    rows[3]["chosen"] = [{"role": "assistant", "content": own[3]}]  # the model already answers this one "right"
    out, dropped = model_answers_as_negatives("dpo", Dataset.from_list(rows), model, tokenizer, 6, batch_size=3)
    assert dropped == 1 and len(out) == 3
    assert [r["rejected"] for r in out] == [[{"role": "assistant", "content": a}] for a in own[:3]]
    assert [r["chosen"] for r in out] == [r["chosen"] for r in rows[:3]]

    kto_rows = [{"prompt": p, "completion": c, "label": label} for p in prompts[:2]
                for c, label in (("It is right.", True), ("Go away.", False))]
    out, dropped = model_answers_as_negatives("kto", Dataset.from_list(kto_rows), model, tokenizer, 6, batch_size=4)
    assert dropped == 0
    assert [r["completion"] for r in out] == ["It is right.", own[0], "It is right.", own[1]]


def test_dpo_stage_learns_to_rank_the_answer_above_its_own(tiny_model_dir, tmp_path):
    """The feedback loop through the stage: rejected = the input model's answers (train and held-out), and a
    few LoRA steps make the model rank the chosen answers above its former ones more often than before."""
    from datasets import Dataset

    data = tmp_path / "prefs.jsonl"
    Dataset.from_list(preference_rows(24)).to_json(str(data))
    out = tmp_path / "dpo-own"
    rc = dpo.main(stage_argv(tiny_model_dir, out, dataset_name=data, use_peft="true", lora_r=8, max_steps=6,
                             learning_rate=5e-3, heldout_fraction=0.25, preference_negatives="model",
                             negatives_max_new_tokens=8))
    assert rc == 0
    held = [json.loads(line) for line in (out / "data/heldout.jsonl").read_text().splitlines()]
    own = _greedy_answers(tiny_model_dir, [r["prompt"] for r in held], 8)
    assert [r["rejected"] for r in held] == [[{"role": "assistant", "content": a}] for a in own]
    record = json.loads((out / "eval_heldout.json").read_text())
    assert record["trained"]["mean_logp_margin"] > record["base"]["mean_logp_margin"]
    assert record["trained"]["reward_accuracy"] > 0.5


def test_unknown_negatives_source_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    """In a recipe (argparse does not check YAML values) and on the command line."""
    import pytest

    from llm_recipes.config import ConfigError

    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"output_dir: {tmp_path / 'o'}\nmodel_name_or_path: {tiny_model_dir}\ndataset_name: x.jsonl\n"
                      "preference_negatives: mine\n")
    with pytest.raises(ConfigError, match="preference_negatives must be one of random, sibling, model, got 'mine'"):
        dpo.main(["--config", str(recipe)])
    from llm_recipes import sft

    # the list of stages comes from the methods table (issue 19 added orpo to it)
    with pytest.raises(ConfigError,
                       match=r"preference_negatives: model is for the preference stages \(dpo, kto, orpo\), "
                             "not 'sft'"):
        sft.main(stage_argv(tiny_model_dir, tmp_path / "s", dataset_name="x.jsonl", preference_negatives="model"))
    with pytest.raises(SystemExit):
        dpo.main(stage_argv(tiny_model_dir, tmp_path / "o", dataset_name="x.jsonl", preference_negatives="mine"))
    assert "invalid choice: 'mine'" in capsys.readouterr().err


def test_text_loss_keeps_the_text_model_during_dpo(tiny_model_dir, tmp_path):
    """Same DPO run with and without `text_loss_weight`: with it, the LM loss on the corpus' text is logged and
    ends lower than without it (the preference loss alone never looks at plain text)."""
    import pytest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_recipes.config import ConfigError
    from llm_recipes.finetuning import text_mix

    clean = write_clean_folder(tmp_path / "clean")
    common = dict(dataset_name="python-docs-preferences", corpus_path=clean, heldout_fraction=0.25, beta=0.1,
                  torch_num_threads=1, max_steps=6, learning_rate=3e-3, logging_steps=1)
    assert dpo.main(stage_argv(tiny_model_dir, tmp_path / "plain", **common)) == 0
    assert dpo.main(stage_argv(tiny_model_dir, tmp_path / "text", text_loss_weight=1.0, **common)) == 0
    logged = [json.loads(line) for line in (tmp_path / "text" / "metrics.jsonl").read_text().splitlines()]
    assert [m["text_loss"] for m in logged if "text_loss" in m] and all(
        math.isfinite(m["text_loss"]) for m in logged if "text_loss" in m)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = torch.tensor(text_mix.text_rows(str(clean), tokenizer, rows=16, max_length=64, seed=7))

    def text_loss(folder):
        model = AutoModelForCausalLM.from_pretrained(folder / "final").eval()
        with torch.no_grad():
            return float(model(input_ids=rows, labels=rows).loss)

    assert text_loss(tmp_path / "text") < text_loss(tmp_path / "plain")

    with pytest.raises(ConfigError, match="text_loss_weight is for the preference stages; 'sft'"):
        from llm_recipes import sft

        sft.main(stage_argv(tiny_model_dir, tmp_path / "s", dataset_name="x.jsonl", text_loss_weight=0.5))
    with pytest.raises(ConfigError, match="text_loss_weight must be a finite number >= 0"):
        dpo.main(stage_argv(tiny_model_dir, tmp_path / "o", dataset_name="x.jsonl", text_loss_weight=-1))

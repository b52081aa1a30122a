"""`llm-recipes sft` on a tiny RecipeGPT: full and LoRA fine-tuning, packing (padding-free), domain text,
the merged checkpoint, the held-out measurement, bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from finetuning_helpers import logged_losses, qa_rows, read_tensors, stage_argv, write_clean_folder

from llm_recipes import sft


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    return write_clean_folder(tmp_path_factory.mktemp("clean"))


def test_full_sft_on_python_docs_trains_saves_and_improves_heldout(tiny_model_dir, clean_dir, tmp_path):
    out = tmp_path / "sft"
    rc = sft.main(stage_argv(tiny_model_dir, out, dataset_name="python-docs-qa", corpus_path=clean_dir,
                             assistant_only_loss="true", heldout_fraction=0.25, max_steps=6, learning_rate=3e-3))
    assert rc == 0
    losses = logged_losses(out)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    before, after = read_tensors(tiny_model_dir / "model.safetensors"), read_tensors(out / "final/model.safetensors")
    assert set(before) == set(after)
    assert all(not before[k].equal(after[k]) for k in before if "norm" not in k)

    final = out / "final"
    gen = json.loads((final / "generation_config.json").read_text())
    from transformers import AutoTokenizer

    from llm_recipes.tokenizer.bpe import end_of_turn_token_ids
    assert gen["eos_token_id"] == end_of_turn_token_ids(AutoTokenizer.from_pretrained(final))
    assert json.loads((final / "config.json").read_text())["use_cache"] is True
    assert (out / "stage_complete.json").is_file() and (out / "resolved_config.yaml").is_file()
    train_rows = (out / "data/train.jsonl").read_text().splitlines()
    held_rows = (out / "data/heldout.jsonl").read_text().splitlines()
    assert train_rows and held_rows and "messages" in json.loads(held_rows[0])

    record = json.loads((out / "eval_heldout.json").read_text())
    assert record["stage"] == "sft" and record["metric"] == "answer_loss" and record["higher_is_better"] is False
    assert record["base"]["examples"] == len(held_rows) == record["trained"]["examples"]
    # measured, not assumed: six steps at a high rate already lower the held-out answer loss of a random model
    assert record["trained_value"] < record["base_value"] and record["improved"] is True
    # "improved" is a paired bootstrap over the same held-out rows whose 95% interval excludes zero
    assert record["verdict"] == "better" and record["difference"]["interval"][1] < 0
    assert record["difference"]["items"] == len(held_rows)


def test_lora_sft_changes_only_the_adapter_and_merges_to_the_same_logits(tiny_model_dir, tmp_path):
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = tmp_path / "chats.jsonl"
    Dataset.from_list(qa_rows(16)).to_json(str(data))
    out = tmp_path / "lora"
    rc = sft.main(stage_argv(tiny_model_dir, out, dataset_name=data, use_peft="true", lora_r=4,
                             lora_target_modules=["q_proj", "v_proj", "down_proj"], assistant_only_loss="true"))
    assert rc == 0
    assert all(math.isfinite(x) for x in logged_losses(out))
    adapter = read_tensors(out / "adapter/adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: any change is training
    assert {k.split(".")[-3] for k in adapter} == {"q_proj", "v_proj", "down_proj"}

    ids = torch.tensor([[0, 5, 17, 42, 99, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    with torch.no_grad():
        adapter_logits, merged_logits = with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        base_logits = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4)

    # the merged folder is standalone: plain transformers with remote code, llm_recipes not imported
    code = ("import sys, torch; from transformers import AutoModelForCausalLM;"
            f"m = AutoModelForCausalLM.from_pretrained({str(out / 'final')!r}, trust_remote_code=True).eval();"
            "assert 'llm_recipes' not in sys.modules;"
            f"print(m(input_ids=torch.tensor({ids.tolist()})).logits[0, -1, :5].tolist())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    torch.testing.assert_close(torch.tensor(remote), merged_logits[0, -1, :5], atol=1e-5, rtol=1e-5)


def test_packed_padding_free_batches_match_separate_sequences(tiny_model_dir, tiny_tokenizer):
    """TRL's padding-free collator output (position_ids, cu_seq_lens_*, max_length_*, seq_idx) goes through
    RecipeGPT and each packed sequence sees only itself."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    texts = ["The for statement iterates.", "A dict maps keys to values, and more words here.", "len(x)"]
    seqs = [tiny_tokenizer(t)["input_ids"] for t in texts]
    batch = DataCollatorForLanguageModeling(pad_token_id=tiny_tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": s} for s in seqs])
    assert {"position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"} <= set(batch)
    assert "attention_mask" not in batch
    with torch.no_grad():
        # use_cache=False as in training (TRL passes it): with a cache, transformers does not look for packing
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        separate = torch.cat([model(input_ids=torch.tensor([s])).logits[0] for s in seqs])
        loss = model(**batch, use_cache=False).loss
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-4)
    assert math.isfinite(loss.item())


def test_domain_adaptive_sft_on_clean_text_with_packing(tiny_model_dir, clean_dir, tmp_path):
    out = tmp_path / "domain"
    rc = sft.main(stage_argv(tiny_model_dir, out, dataset_name=clean_dir, packing="true", max_length=128,
                             per_device_train_batch_size=2, use_peft="true"))
    assert rc == 0
    assert all(math.isfinite(x) for x in logged_losses(out))
    record = json.loads((out / "eval_heldout.json").read_text())
    assert record["format"] == "text" and record["base"]["examples"] == 4  # the clean validation split
    assert json.loads((out / "data/heldout.jsonl").read_text().splitlines()[0]).keys() == {"text"}


def test_bad_inputs_fail_with_clear_errors(tiny_model_dir, tmp_path, capsys):
    from datasets import Dataset

    from llm_recipes.config import ConfigError

    bad = tmp_path / "bad.jsonl"
    Dataset.from_list([{"question": "q", "answer": "a"}] * 3).to_json(str(bad))
    assert sft.main(stage_argv(tiny_model_dir, tmp_path / "o1", dataset_name=bad)) == 2
    assert "columns ['answer', 'question'] do not fit stage 'sft'" in capsys.readouterr().err

    chats = tmp_path / "chats.jsonl"
    Dataset.from_list(qa_rows(4)).to_json(str(chats))
    assert sft.main(stage_argv(tiny_model_dir, tmp_path / "o2", dataset_name=chats, use_peft="true",
                               lora_target_modules=["c_attn"])) == 2
    err = capsys.readouterr().err
    assert "LoRA target_modules ['c_attn'] match no module" in err and "q_proj" in err
    assert not (tmp_path / "o2" / "stage_complete.json").exists()

    with pytest.raises(ConfigError, match="unknown key 'lerning_rate'"):
        sft.main(stage_argv(tiny_model_dir, tmp_path / "o3", dataset_name=chats, lerning_rate=1))
    with pytest.raises(ConfigError, match="corpus_path"):
        sft.main(stage_argv(tiny_model_dir, tmp_path / "o4", dataset_name="python-docs-qa"))


def test_time_budget_stops_training_and_still_saves(tiny_model_dir, tmp_path):
    from datasets import Dataset

    chats = tmp_path / "chats.jsonl"
    Dataset.from_list(qa_rows(8)).to_json(str(chats))
    out = tmp_path / "budget"
    assert sft.main(stage_argv(tiny_model_dir, out, dataset_name=chats, max_steps=500, max_train_seconds=0.001)) == 0
    assert len(logged_losses(out)) == 1  # stopped after the first step
    assert (out / "final/model.safetensors").is_file() and (out / "eval_heldout.json").is_file()


def test_text_mix_rows_come_from_the_train_split_and_train_on_every_token(tiny_tokenizer, clean_dir):
    import pyarrow.parquet as pq
    from datasets import Dataset

    from llm_recipes.finetuning import text_mix

    train_text = "\n".join(pq.read_table(next((clean_dir / "train").glob("*.parquet"))).column("text").to_pylist())
    validation = pq.read_table(next((clean_dir / "validation").glob("*.parquet"))).column("text").to_pylist()
    chunks = text_mix.text_rows(str(clean_dir), tiny_tokenizer, rows=5, max_length=32, seed=1)
    assert len(chunks) == 5 and all(len(c) == 32 for c in chunks)
    for chunk in chunks:  # every piece between EOS tokens is train-split text, never a held-out document's
        for piece in tiny_tokenizer.decode(chunk).split(tiny_tokenizer.eos_token):
            assert piece in train_text
            assert len(piece) < 40 or not any(piece in doc for doc in validation)
    assert text_mix.rows_for_fraction(0.5, 10) == 10 and text_mix.rows_for_fraction(0.2, 8) == 2

    packed = Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[-100, 2, 3]], "seq_lengths": [[3]]})
    mixed = text_mix.mix_into(packed, chunks[:2])
    assert len(mixed) == 3
    rows = sorted(mixed, key=lambda r: len(r["input_ids"]))
    assert rows[0]["labels"] == [-100, 2, 3]  # the fine-tuning row keeps its mask
    assert all(r["labels"] == r["input_ids"] and r["seq_lengths"] == [32] for r in rows[1:])
    with pytest.raises(ValueError, match="packing: true"):
        text_mix.mix_into(Dataset.from_dict({"input_ids": [[1]]}), chunks)


def test_sft_with_text_mix_and_threads_from_the_free_cpus(tiny_model_dir, clean_dir, tmp_path, capsys):
    from llm_recipes.config import ConfigError

    out = tmp_path / "mix"
    rc = sft.main(stage_argv(tiny_model_dir, out, dataset_name="python-docs-qa", corpus_path=clean_dir,
                             assistant_only_loss="true", packing="true", max_length=64, text_mix_fraction=0.5,
                             max_steps=3))
    assert rc == 0
    said = capsys.readouterr().out
    assert "[sft] text mix:" in said and "of plain text among" in said
    assert all(math.isfinite(x) for x in logged_losses(out))
    # no torch_num_threads: chosen from the CPUs free at the start, logged and recorded
    assert "CPU thread(s):" in said and "CPUs free at start" in said
    done = json.loads((out / "stage_complete.json").read_text())
    assert done["steps"] == 3 and done["torch_num_threads"] >= 1
    assert done["cpu"]["cpus"] >= 1 and 0 <= done["cpu"]["cpus_free_min"] <= done["cpu"]["cpus"]

    with pytest.raises(ConfigError, match="packing: true"):
        sft.main(stage_argv(tiny_model_dir, tmp_path / "o1", dataset_name="python-docs-qa", corpus_path=clean_dir,
                            text_mix_fraction=0.3, packing="false"))
    with pytest.raises(ConfigError, match=r"text_mix_fraction must be in \[0, 1\)"):
        sft.main(stage_argv(tiny_model_dir, tmp_path / "o2", dataset_name="python-docs-qa", corpus_path=clean_dir,
                            text_mix_fraction=1.0))

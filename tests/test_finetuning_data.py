"""Fine-tuning data: loading, format conversion, validation errors, held-out split, python-docs generator,
and TRL's assistant-only loss mask with our chat template."""

from __future__ import annotations

import json

import pytest
from conftest import shared_file
from finetuning_helpers import preference_rows, python_docs_records, qa_rows, write_clean_folder

from llm_recipes.finetuning.data import (
    DatasetFormatError,
    convert_for_stage,
    detect_format,
    load_raw_dataset,
    parse_label,
    split_heldout,
)
from llm_recipes.finetuning.python_docs import build_python_docs_data, load_corpus


def _ds(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_formats_are_detected():
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["prompt", "completion"]) == "prompt_completion"
    assert detect_format(["prompt", "completion", "label"]) == "unpaired"
    assert detect_format(["prompt", "chosen", "rejected"]) == "preference"
    assert detect_format(["text", "title", "source"]) == "text"
    assert detect_format(["instruction", "input", "output"]) == "alpaca"
    assert detect_format(["instruction", "input", "output", "chosen", "rejected"]) == "alpaca_preference"
    assert detect_format(["question", "answer"]) is None


def test_rasbt_alpaca_files_convert_for_each_stage():
    instructions = load_raw_dataset(str(shared_file("rasbt/ch07/instruction-data.json")))["train"]
    sft, fmt = convert_for_stage(instructions, "sft", system_prompt="Be brief.")
    assert fmt == "messages" and len(sft) == 1100
    first = sft[0]["messages"]
    assert [m["role"] for m in first] == ["system", "user", "assistant"]
    assert (first[1]["content"].startswith("Evaluate the following phrase")
            and "freind --> friend" in first[1]["content"])

    prefs = load_raw_dataset(str(shared_file("rasbt/ch07/instruction-data-with-preference.json")))["train"]
    dpo, fmt = convert_for_stage(prefs, "dpo")
    assert fmt == "preference" and dpo.column_names == ["prompt", "chosen", "rejected"]
    assert dpo[0]["chosen"][0]["role"] == "assistant" and dpo[0]["chosen"] != dpo[0]["rejected"]
    kto, fmt = convert_for_stage(prefs.select(range(5)), "kto")
    assert fmt == "unpaired" and len(kto) == 10 and kto["label"] == [True, False] * 5


def test_missing_columns_name_the_dataset_and_expected_columns():
    with pytest.raises(DatasetFormatError, match=r"my-data.*\['answer', 'question'\].*prompt/chosen/rejected"):
        convert_for_stage(_ds([{"question": "q", "answer": "a"}]), "dpo", name="my-data")
    with pytest.raises(DatasetFormatError, match="messages | prompt/completion | text"):
        convert_for_stage(_ds([{"question": "q", "answer": "a"}]), "sft", name="x")
    # SFT data is not preference data
    with pytest.raises(DatasetFormatError, match="prompt/chosen/rejected"):
        convert_for_stage(_ds(qa_rows(2)), "dpo")


def test_conversation_without_assistant_turn_is_rejected():
    rows = qa_rows(3)
    rows[2] = {"messages": [{"role": "user", "content": "hello?"}]}
    with pytest.raises(DatasetFormatError, match=r"row 2: the conversation has no assistant turn"):
        convert_for_stage(_ds(rows), "sft", name="chats")
    bad_role = [{"messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    with pytest.raises(DatasetFormatError, match="role 'human'"):
        convert_for_stage(_ds(bad_role), "sft")


def test_kto_labels_accept_feedback_words_and_reject_others():
    assert [parse_label(v) for v in (True, 0, 1, "up", "Down", "thumbs_up")] == [True, False, True, True, False, True]
    with pytest.raises(DatasetFormatError, match="'maybe'"):
        parse_label("maybe")
    rows = [{"prompt": "Say hi", "completion": "hi", "label": "maybe"}]
    with pytest.raises(DatasetFormatError, match="thumbs up/down"):
        convert_for_stage(_ds(rows), "kto")


def test_heldout_split_is_deterministic_and_order_independent():
    data = _ds(qa_rows(40))
    train, held = split_heldout(data, 0.2)
    assert len(held) == 8 and len(train) == 32
    train2, held2 = split_heldout(data.shuffle(seed=3), 0.2)
    assert sorted(json.dumps(r) for r in held) == sorted(json.dumps(r) for r in held2)
    assert not {json.dumps(r) for r in held} & {json.dumps(r) for r in train}


def test_local_files_folders_and_missing_paths(tmp_path):
    data = _ds(preference_rows(6))
    data.to_json(str(tmp_path / "prefs.jsonl"))
    data.to_parquet(str(tmp_path / "prefs.parquet"))
    data.save_to_disk(str(tmp_path / "saved"))
    for name in ("prefs.jsonl", "prefs.parquet", "saved"):
        loaded = load_raw_dataset(str(tmp_path / name))
        assert len(loaded["train"]) == 6 and set(loaded["train"].column_names) == {"prompt", "chosen", "rejected"}
    with pytest.raises(DatasetFormatError, match="does not exist"):
        load_raw_dataset(str(tmp_path / "nope.jsonl"))


def test_python_docs_generator_makes_disjoint_heldout_and_hard_negatives(tmp_path):
    records = load_corpus(str(write_clean_folder(tmp_path / "clean")))
    assert len(records) == len(python_docs_records())
    train, held = build_python_docs_data(records, "qa", heldout_fraction=0.25, questions_per_document=3)
    assert train and held
    train_titles, held_titles = {r["title"] for r in train}, {r["title"] for r in held}
    assert not train_titles & held_titles
    questions = [r["messages"][0]["content"] for r in train if r["title"] == "json.dumps"]
    assert len(set(questions)) == 3 and all("json.dumps" in q for q in questions)
    assert any(r["messages"][0]["content"].startswith(("Explain the", "Tell me about the")) or "statement" in
               r["messages"][0]["content"] for r in train if r["title"].startswith("pydoc topic:"))
    again, _ = build_python_docs_data(list(reversed(records)), "qa", heldout_fraction=0.25, questions_per_document=3)
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, train))

    prefs, held_prefs = build_python_docs_data(records, "preferences", heldout_fraction=0.25)
    assert all(p["chosen"] != p["rejected"] for p in prefs + held_prefs)
    siblings, _ = build_python_docs_data(records, "preferences", heldout_fraction=0.25, negatives="sibling")
    pair = [p for p in siblings if p["title"] == "json.dumps"][0]
    assert "json" in pair["rejected"][0]["content"].lower()  # its sibling json.loads, not a random topic
    with pytest.raises(DatasetFormatError, match="lacks columns"):
        _ds([{"body": "x"}]).to_parquet(str(tmp_path / "bad.parquet"))
        load_corpus(str(tmp_path / "bad.parquet"))


def test_assistant_only_loss_masks_exactly_the_non_assistant_tokens(tiny_model_dir, tiny_tokenizer, tmp_path):
    """TRL's labels under our chat template: assistant contents + their <|im_end|> are trained, nothing else."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    import llm_recipes  # noqa: F401

    tok = tiny_tokenizer
    conversation = [{"role": "system", "content": "You answer questions about Python."},
                    {"role": "user", "content": "What does len do?"},
                    {"role": "assistant", "content": "It returns the number of items."},
                    {"role": "user", "content": "And abs?"},
                    {"role": "assistant", "content": "The absolute value of a number."}]
    # the expected token sequence, built piece by piece (special tokens split the text into independent pieces)
    ids, trained = [tok.bos_token_id], [False]
    piece = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    im_start, im_end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    for m in conversation:
        header = [im_start] + piece(m["role"] + "\n")
        if m["role"] == "assistant":
            answer = piece(m["content"]) + [im_end]
            ids += header + answer + piece("\n")
            trained += [False] * len(header) + [True] * len(answer) + [False]
        else:
            turn = header + piece(m["content"]) + [im_end] + piece("\n")
            ids += turn
            trained += [False] * len(turn)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    args = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, use_cpu=True, bf16=False, report_to=[],
                     max_length=256)
    trainer = SFTTrainer(model=model, args=args, train_dataset=_ds([{"messages": conversation}]), processing_class=tok)
    row = trainer.train_dataset[0]
    assert row["input_ids"] == ids
    assert row["labels"] == [t if keep else -100 for t, keep in zip(ids, trained)]
    assert sum(trained) == len(piece(conversation[2]["content"])) + len(piece(conversation[4]["content"])) + 2


def test_conversational_prompt_with_string_answers_becomes_chat_pairs():
    rows = [{"prompt": [{"role": "user", "content": "Say hi"}], "chosen": "hi", "rejected": "no"}] * 2
    converted, fmt = convert_for_stage(_ds(rows), "dpo")
    assert fmt == "preference"
    assert converted[0]["chosen"] == [{"role": "assistant", "content": "hi"}]
    assert converted[0]["prompt"] == [{"role": "user", "content": "Say hi"}]


def test_resume_latest_finds_the_newest_checkpoint(tmp_path):
    from llm_recipes.config import ConfigError
    from llm_recipes.finetuning.training import resolve_resume

    assert resolve_resume(None, tmp_path) is None and resolve_resume("latest", tmp_path) is None
    for step in (5, 20, 10):  # complete Trainer checkpoints: trainer_state.json naming the step, and weights
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
    assert resolve_resume("latest", tmp_path).endswith("checkpoint-20")
    assert resolve_resume(str(tmp_path / "checkpoint-5"), tmp_path).endswith("checkpoint-5")
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)

"""Small real inputs for the pretraining tests: a clean-dataset folder and a tiny config."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_corpus


def write_clean_dataset(folder: Path, texts: list[str] | None = None, validation: list[str] | None = None) -> Path:
    """A folder laid out like the `clean` stage's output: train/ and validation/ parquet with `text`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if texts is None:
        corpus = tiny_corpus()
        texts, validation = corpus[8:], corpus[:8]
    for split, rows in (("train", texts), ("validation", validation if validation is not None else texts[:4])):
        (folder / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": rows}), folder / split / "part-00000.parquet")
    return folder


def tiny_config(output_dir, dataset_path, tokenizer_path, **overrides):
    """A PretrainConfig of the tiny conftest model size that trains in well under a second per step."""
    from llm_recipes.training import PretrainConfig

    kwargs = dict(output_dir=str(output_dir), dataset_path=str(dataset_path), tokenizer_path=str(tokenizer_path) if tokenizer_path else None,
                  model_preset="test", seq_len=64, per_device_train_batch_size=4, max_steps=8, warmup_steps=2,
                  learning_rate=3e-3, logging_steps=1, eval_steps=0, eval_max_batches=2, save_steps=0,
                  report_to=["none"], sample_prompts=["The"], sample_max_new_tokens=4, data_mode="shards",
                  seed=0, model_overrides=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2))
    kwargs.update(overrides)
    return PretrainConfig(**kwargs)

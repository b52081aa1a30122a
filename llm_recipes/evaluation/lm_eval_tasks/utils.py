"""Loaders for the lm-evaluation-harness tasks in this folder: the JSONL files sit next to this file,
so the tasks work from any working directory (`--include_path` only tells lm_eval where the YAMLs are)."""

import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    import datasets

    with open(os.path.join(HERE, f"{name}.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# lm_eval calls custom_dataset(**metadata, **dataset_kwargs); the keyword arguments are not needed here
def english_cloze(**kwargs):
    return _load("english_cloze")


def python_docs_cloze(**kwargs):
    return _load("python_docs_cloze")


def python_docs_mc(**kwargs):
    return _load("python_docs_mc")

"""Small real data for the fine-tuning tests: a clean-stage folder of Python documentation built from the
running interpreter (pydoc topics + standard-library docstrings), and a few hand-written rows."""

from __future__ import annotations

import inspect
from pathlib import Path

API_NAMES = ("os.path.join", "os.path.split", "os.path.exists", "json.dumps", "json.loads", "re.compile",
             "re.sub", "math.sqrt", "math.floor", "shutil.copy", "textwrap.dedent", "textwrap.wrap",
             "itertools.chain", "functools.partial", "collections.Counter", "pathlib.Path.read_text")


def python_docs_records(topics: int = 24) -> list[dict[str, str]]:
    """Documents shaped like the clean stage's rows: text, title, source, location."""
    import importlib
    import pydoc_data.topics

    records = []
    for key in sorted(pydoc_data.topics.topics)[:topics]:
        text = pydoc_data.topics.topics[key]
        records.append({"text": text, "title": f"pydoc topic: {key}", "source": "python-docs",
                        "location": f"python:topic:{key}"})
    for name in API_NAMES:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        doc = inspect.getdoc(obj) or ""
        records.append({"text": doc, "title": name, "source": "python-docs", "location": f"python:{name}"})
    return records


def write_clean_folder(path: Path, topics: int = 24) -> Path:
    """A folder like the clean stage writes: train/*.parquet and validation/*.parquet."""
    from datasets import Dataset

    records = python_docs_records(topics)
    (path / "train").mkdir(parents=True, exist_ok=True)
    (path / "validation").mkdir(parents=True, exist_ok=True)
    Dataset.from_list(records[:-4]).to_parquet(str(path / "train" / "part-00000.parquet"))
    Dataset.from_list(records[-4:]).to_parquet(str(path / "validation" / "part-00000.parquet"))
    return path


def qa_rows(n: int = 12) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]} for i in range(n)]


def preference_rows(n: int = 12) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
             "chosen": [{"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}],
             "rejected": [{"role": "assistant", "content": "I do not know."}]} for i in range(n)]


def stage_argv(model_dir, output_dir, **overrides) -> list[str]:
    """Command-line flags for a two-step CPU run of a fine-tuning stage on a tiny model."""
    values = {"model_name_or_path": str(model_dir), "output_dir": str(output_dir), "max_steps": 2,
              "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "use_cpu": "true", "bf16": "false",
              "max_length": 256, "logging_steps": 1, "save_strategy": "no", "learning_rate": 1e-3,
              "gradient_checkpointing": "false", "seed": 0}
    values.update(overrides)
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", *([str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)])]
    return argv


def read_tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def logged_losses(output_dir) -> list[float]:
    import json

    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]

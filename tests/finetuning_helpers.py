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

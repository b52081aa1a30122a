"""Fine-tuning data: load it from wherever it lives, check its shape, convert it to TRL's formats,
split off a deterministic held-out set and write down exactly what was used.

Formats (the column names TRL reads):

| format        | columns                          | used by        |
|---------------|----------------------------------|----------------|
| `messages`    | `messages` (list of role/content)| sft            |
| `prompt_completion` | `prompt`, `completion`     | sft            |
| `text`        | `text` (domain-adaptive training)| sft            |
| `preference`  | `prompt`, `chosen`, `rejected`   | dpo (kto: unpaired into two rows) |
| `unpaired`    | `prompt`, `completion`, `label`  | kto            |
| `alpaca`      | `instruction`, `input`, `output` (+ `chosen`/`rejected`) | converted to `messages` / `preference` |

Prompts and completions may be plain strings or conversations (lists of messages); conversations
go through the tokenizer's chat template.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..fileio import atomic_write_text
from .methods import BUILTIN_KIND, method

ROLES = ("system", "user", "assistant", "tool")
BUILTIN_DATASETS = tuple(BUILTIN_KIND)  # made from a clean corpus by python_docs.build_python_docs_data
FORMAT_COLUMNS = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
}
LOCAL_SUFFIXES = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


class DatasetFormatError(ValueError):
    """A fine-tuning dataset whose columns or rows do not fit the stage."""


# -- loading ---------------------------------------------------------------------------------------


def load_raw_dataset(name: str, config: str | None = None, data_files: list[str] | None = None):
    """Loads a dataset by name: a local file (json/jsonl/parquet/csv), a folder (saved with
    `save_to_disk`, or holding data files, e.g. `train/*.parquet`), or a Hub dataset id.

    Returns:
        A `datasets.DatasetDict` (split name -> Dataset).
    """
    import datasets

    if data_files:
        suffix = Path(data_files[0]).suffix.lower()
        builder = LOCAL_SUFFIXES.get(suffix)
        if builder is None:
            raise DatasetFormatError(f"data_files {data_files}: unsupported file type {suffix!r}; expected one of "
                                     f"{', '.join(LOCAL_SUFFIXES)}")
        return _load_files(builder, list(data_files))
    path = Path(os.path.expanduser(name))
    if path.is_file():
        builder = LOCAL_SUFFIXES.get(path.suffix.lower())
        if builder is None:
            raise DatasetFormatError(f"dataset file {name!r}: unsupported file type {path.suffix!r}; expected one of "
                                     f"{', '.join(LOCAL_SUFFIXES)}")
        return _load_files(builder, [str(path)])
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            return _as_dict(datasets.load_from_disk(str(path)))
        try:
            return _as_dict(datasets.load_dataset(str(path)))
        except Exception as e:  # noqa: BLE001  (datasets raises many types here; the message says which folder)
            raise DatasetFormatError(f"dataset folder {name!r} holds no readable data files "
                                     f"(json/jsonl/parquet/csv, or a save_to_disk folder): {e}") from e
    if name.startswith((".", "/", "~")) or name.endswith(tuple(LOCAL_SUFFIXES)):
        raise DatasetFormatError(f"dataset {name!r} does not exist (expected a local file or folder)")
    try:
        return _as_dict(datasets.load_dataset(name, config))
    except Exception as e:  # noqa: BLE001
        raise DatasetFormatError(f"could not load Hub dataset {name!r} (config {config!r}): {e}. "
                                 "Offline? Set HF_HUB_OFFLINE=0 with network access, or point dataset_name at "
                                 "a local file or folder.") from e


def _load_files(builder: str, files: list[str]):
    """Local data files through `datasets`; an empty or unreadable file is a DatasetFormatError naming it
    (datasets itself ends in a bare StopIteration on an empty JSON Lines file)."""
    import datasets

    for file in files:
        if os.path.isfile(file) and not _has_content(file):
            raise DatasetFormatError(f"dataset file {file!r} is empty (expected {builder} rows)"
                                     + _feedback_export_note(file))
    try:
        loaded = _as_dict(datasets.load_dataset(builder, data_files=files))
    except Exception as e:  # noqa: BLE001  (datasets raises many types, StopIteration included)
        raise DatasetFormatError(f"dataset file(s) {', '.join(map(repr, files))} cannot be read as {builder}: "
                                 f"{type(e).__name__}: {e}"[:500]) from e
    if all(len(split) == 0 for split in loaded.values()):
        raise DatasetFormatError(f"dataset file(s) {', '.join(map(repr, files))} hold no rows")
    return loaded


def _feedback_export_note(file: str) -> str:
    """Why an empty file written by `llm-recipes feedback` is empty (its feedback_summary.json lies next to it):
    the store held no corrections, so there is nothing to train on; '' for other files."""
    summary = Path(file).parent / "feedback_summary.json"
    if not summary.is_file():
        return ""
    try:
        counts = json.loads(summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        counts = {}
    rows = counts.get("rows", "?") if isinstance(counts, dict) else "?"
    return (f": it is a feedback export, and the store it came from ({rows} feedback rows) holds no corrections "
            f"for it, so there is nothing to train on. Correct some answers first (\"suggest a better answer\" or "
            "thumbs up and down on the chat page), then run `llm-recipes feedback` again")


def _has_content(file: str) -> bool:
    with open(file, "rb") as f:
        while block := f.read(1 << 16):
            if block.strip():
                return True
    return False


def _as_dict(loaded):
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return datasets.DatasetDict({"train": loaded})
    return loaded


# -- format detection and conversion -------------------------------------------------------------


def detect_format(columns: Iterable[str]) -> str | None:
    """The TRL format a set of column names holds, `alpaca` for instruction/output data, or None."""
    cols = set(columns)
    if {"prompt", "chosen", "rejected"} <= cols or {"chosen", "rejected"} <= cols and "instruction" not in cols:
        return "preference"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if "messages" in cols or "conversations" in cols:
        return "messages"
    if {"instruction", "output"} <= cols:
        return "alpaca_preference" if {"chosen", "rejected"} <= cols else "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if "text" in cols:
        return "text"
    return None


def alpaca_prompt(row: dict[str, Any]) -> str:
    """The user turn of an Alpaca-style record: the instruction, then its input (if any) after a blank line."""
    instruction = str(row.get("instruction") or "").strip()
    extra = str(row.get("input") or "").strip()
    return f"{instruction}\n\n{extra}" if extra else instruction


def _user(text: str, system_prompt: str | None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return turns + [{"role": "user", "content": text}]


def convert_for_stage(dataset, stage, name: str = "dataset", system_prompt: str | None = None):
    """Converts a loaded Dataset into one of the formats fine-tuning method `stage` (a `methods.Method` or its
    name) trains on, preferred first, keeping only those columns.

    Alpaca records become conversations (for `messages`) or conversational preference pairs; preference
    pairs feed unpaired training (KTO) as one desirable and one undesirable row each, and supervised training
    (`prompt_completion`) through their chosen answers.

    Raises:
        DatasetFormatError: when the columns fit none of the formats.
    """
    m = method(stage) if isinstance(stage, str) else stage
    formats = m.formats
    fmt = detect_format(dataset.column_names)
    if fmt in ("alpaca", "alpaca_preference"):
        if "messages" in formats:
            dataset = dataset.map(lambda r: {"messages": _user(alpaca_prompt(r), system_prompt)
                                             + [{"role": "assistant", "content": str(r["output"])}]},
                                  remove_columns=dataset.column_names, desc="Alpaca -> messages")
            fmt = "messages"
        elif fmt == "alpaca_preference":
            dataset = dataset.map(lambda r: {"prompt": _user(alpaca_prompt(r), system_prompt),
                                             "chosen": [{"role": "assistant", "content": str(r["chosen"])}],
                                             "rejected": [{"role": "assistant", "content": str(r["rejected"])}]},
                                  remove_columns=dataset.column_names, desc="Alpaca -> preference pairs")
            fmt = "preference"
    if fmt == "preference" and "prompt" not in dataset.column_names:
        # implicit prompt: chosen and rejected conversations share their opening turns
        from trl.data_utils import maybe_extract_prompt

        dataset = dataset.map(maybe_extract_prompt, desc="Extracting the shared prompt")
    if fmt == "messages" and "messages" not in dataset.column_names:
        dataset = dataset.rename_column("conversations", "messages")
    if fmt == "preference" and "preference" not in formats:
        if "unpaired" in formats:
            dataset = unpair_preferences(dataset)
            fmt = "unpaired"
        elif "prompt_completion" in formats and "prompt" in dataset.column_names:
            dataset = dataset.rename_column("chosen", "completion").select_columns(["prompt", "completion"])
            fmt = "prompt_completion"
    if fmt not in formats:
        expected = " | ".join("/".join(FORMAT_COLUMNS[f]) for f in formats)
        alpaca = ("instruction/input/output" if "messages" in formats else
                  "instruction/input/chosen/rejected" if {"preference", "unpaired"} & set(formats) else None)
        raise DatasetFormatError(
            f"{name}: columns {sorted(dataset.column_names)} do not fit stage {m.name!r}; expected columns {expected}"
            + (f" (or Alpaca-style {alpaca})" if alpaca else ""))
    dataset = dataset.select_columns(list(FORMAT_COLUMNS[fmt]))
    if fmt in ("preference", "unpaired", "prompt_completion") and not isinstance(dataset[0]["prompt"], str):
        dataset = dataset.map(_completions_as_turns, desc="Wrapping completions as assistant turns")
    validate(dataset, fmt, name)
    if fmt == "unpaired":
        dataset = dataset.map(lambda r: {"label": parse_label(r["label"])})
    return dataset, fmt


def _completions_as_turns(row: dict[str, Any]) -> dict[str, Any]:
    """A conversational prompt with plain-string answers (how a chat feedback store may export them): the
    answers become assistant turns, so the chat template renders prompt and answer together."""
    return {k: [{"role": "assistant", "content": v}] if isinstance(v, str) else v
            for k, v in row.items() if k in ("chosen", "rejected", "completion")}


def unpair_preferences(dataset):
    """Each preference pair becomes two KTO rows: (prompt, chosen, True) and (prompt, rejected, False)."""
    from datasets import Dataset

    rows = []
    for r in dataset:
        rows.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True})
        rows.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False})
    return Dataset.from_list(rows)


LABEL_WORDS = {"true": True, "1": True, "up": True, "good": True, "thumbs_up": True, "desirable": True,
               "false": False, "0": False, "down": False, "bad": False, "thumbs_down": False, "undesirable": False}


def parse_label(value) -> bool:
    """A KTO label: bool, 0/1, or a word such as up/down (what a feedback store might export)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABEL_WORDS:
        return LABEL_WORDS[value.strip().lower()]
    raise DatasetFormatError(f"KTO label {value!r} is not a thumbs up/down; expected true/false, 1/0 or up/down")


# -- validation ------------------------------------------------------------------------------------


def _check_conversation(conv, where: str, need_assistant: bool) -> None:
    if not isinstance(conv, list) or not conv:
        raise DatasetFormatError(f"{where}: expected a non-empty list of messages, got {type(conv).__name__}")
    for i, message in enumerate(conv):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DatasetFormatError(
                f"{where}: message {i} must be a mapping with 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise DatasetFormatError(f"{where}: message {i} has role {message['role']!r}; expected one of {ROLES}")
        if not isinstance(message["content"], str):
            raise DatasetFormatError(f"{where}: message {i} content must be a string")
    if need_assistant and not any(m["role"] == "assistant" for m in conv):
        raise DatasetFormatError(f"{where}: the conversation has no assistant turn, so there is nothing to learn "
                                 f"(roles: {[m['role'] for m in conv]})")


def _check_text_or_conversation(value, where: str, need_assistant: bool) -> None:
    if isinstance(value, str):
        if not value.strip():
            raise DatasetFormatError(f"{where}: empty text")
        return
    _check_conversation(value, where, need_assistant)


def validate(dataset, fmt: str, name: str = "dataset") -> None:
    """Checks every row of a dataset in one of the TRL formats.

    Raises:
        DatasetFormatError: naming the dataset, the row and what was expected.
    """
    if len(dataset) == 0:
        raise DatasetFormatError(f"{name}: no rows")
    for i, row in enumerate(dataset):
        where = f"{name} row {i}"
        if fmt == "messages":
            _check_conversation(row["messages"], where, need_assistant=True)
        elif fmt == "text":
            if not isinstance(row["text"], str) or not row["text"].strip():
                raise DatasetFormatError(f"{where}: 'text' must be a non-empty string")
        elif fmt == "prompt_completion":
            _check_text_or_conversation(row["prompt"], f"{where} prompt", need_assistant=False)
            _check_text_or_conversation(row["completion"], f"{where} completion", need_assistant=True)
        elif fmt == "preference":
            for key in ("prompt", "chosen", "rejected"):
                _check_text_or_conversation(row[key], f"{where} {key}", need_assistant=key != "prompt")
        elif fmt == "unpaired":
            _check_text_or_conversation(row["prompt"], f"{where} prompt", need_assistant=False)
            _check_text_or_conversation(row["completion"], f"{where} completion", need_assistant=True)
            parse_label(row["label"])


# -- held-out split ---------------------------------------------------------------------------------


def row_key(row: dict[str, Any]) -> str:
    """A stable hash of a row's content: the held-out split does not depend on row order or seed."""
    return hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()


def split_heldout(dataset, fraction: float, max_rows: int | None = None):
    """Deterministic train/held-out split: the rows with the smallest content hashes are held out.

    Args:
        dataset: a Dataset.
        fraction: share of rows to hold out (at least one row when fraction > 0 and the dataset has 2+ rows).
        max_rows: cap on held-out rows.

    Returns:
        (train, heldout) Datasets; heldout is None when fraction is 0.
    """
    if fraction <= 0 or len(dataset) < 2:
        return dataset, None
    n = max(1, round(fraction * len(dataset)))
    if max_rows is not None:
        n = min(n, max_rows)
    order = sorted(range(len(dataset)), key=lambda i: row_key(dataset[i]))
    held = set(order[:n])
    return (dataset.select([i for i in range(len(dataset)) if i not in held]),
            dataset.select(sorted(held)))


def write_jsonl(dataset, path: str | os.PathLike) -> Path:
    """Writes a Dataset as JSON lines, atomically (loads back with `load_dataset("json", ...)`)."""
    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in dataset]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return Path(path)

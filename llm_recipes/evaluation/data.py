"""Evaluation data: held-out text, choice tasks (cloze / multiple choice), QA and preference pairs.

Choice tasks come from local JSONL/JSON/Parquet files, Hub datasets (`hub:allenai/ai2_arc:ARC-Easy@test`)
or the built-in sets (`builtin:english_cloze`, ...). Their layout is recognised from the fields:

- cloze: `context`, `candidates`, `answer` (a candidate or its index); scores `" " + candidate`
- multiple choice (ARC, MMLU, ours): `question`, `choices` (list, or ARC's `{"text", "label"}`), `label` /
  `answer` / `answerKey`; scores `"Question: ...\\nAnswer:" + " " + choice`
- HellaSwag: `ctx`, `endings`, `label`; scores `" " + ending`
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.splits import evenly_spaced, split_files
from .models import EvalInputError

BUILTIN_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
BUILTIN_SETS = ("english_cloze", "python_docs_cloze", "python_docs_mc")


@dataclass
class ChoiceItem:
    context: str
    choices: list[str]  # continuations as scored, delimiter included
    gold: int
    lengths: list[int] = field(default_factory=list)  # characters of each choice without the delimiter


@dataclass
class ChoiceTask:
    name: str
    source: str
    layout: str
    items: list[ChoiceItem]


# -- reading rows -----------------------------------------------------------------------------------

def _expand_files(spec: str, what: str) -> list[str]:
    files = sorted(glob.glob(os.path.expanduser(spec))) if any(c in spec for c in "*?[") else [spec]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise EvalInputError(f"{what} {spec!r}: no such file")
    return files


def read_rows(spec: str, what: str = "eval file", split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local .jsonl/.json/.parquet file (or glob), a Hub dataset `hub:path[:config][@split]`,
    or a built-in set `builtin:name`."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN_SETS:
            raise EvalInputError(f"{what} {spec!r}: unknown built-in set; expected one of {', '.join(BUILTIN_SETS)}")
        return read_rows(str(BUILTIN_DIR / f"{name}.jsonl"), what)
    if spec.startswith("hub:"):
        from datasets import load_dataset

        path, _, hub_split = spec[4:].partition("@")
        path, _, config = path.partition(":")
        return list(load_dataset(path, config or None, split=hub_split or split or "test"))
    rows: list[dict[str, Any]] = []
    for file in _expand_files(spec, what):
        if file.endswith(".parquet"):
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(file).to_pylist())
        elif file.endswith(".json"):
            data = json.loads(Path(file).read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise EvalInputError(f"{what} {file!r}: a .json file must hold a list of objects")
            rows.extend(data)
        else:
            with open(file, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise EvalInputError(f"{what} {file!r} line {line_no}: not valid JSON ({e.msg})") from e
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise EvalInputError(f"{what} {spec!r} row {index}: expected a JSON object, got {type(row).__name__}")
    return rows


# -- choice tasks -----------------------------------------------------------------------------------

LAYOUTS = {
    "cloze": ({"context", "candidates", "answer"},),
    "multiple_choice": ({"question", "choices", "label"}, {"question", "choices", "answer"},
                        {"question", "choices", "answerKey"}),
    "hellaswag": ({"ctx", "endings", "label"},),
}


def detect_layout(row: dict[str, Any]) -> str | None:
    keys = set(row)
    for layout, options in LAYOUTS.items():
        if any(option <= keys for option in options):
            return layout
    return None


def _gold_index(value: Any, labels: list[str], n: int, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and value not in labels:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EvalInputError(f"{where}: the answer must be an index or a label, got {value!r}")
    if isinstance(value, int):
        index = value
    elif value in labels:
        index = labels.index(value)
    else:
        raise EvalInputError(f"{where}: answer {value!r} is not one of the choices/labels {labels}")
    if not 0 <= index < n:
        raise EvalInputError(f"{where}: answer index {index} is outside the {n} choices")
    return index


def to_choice_item(row: dict[str, Any], layout: str, where: str) -> ChoiceItem:
    if layout == "cloze":
        context, options, answer = row["context"], row["candidates"], row["answer"]
        labels = list(options) if isinstance(options, list) else []
        prompt, delimiter = context, " "
    elif layout == "hellaswag":
        context, options, answer = row["ctx"], row["endings"], row["label"]
        labels, prompt, delimiter = [], context, " "
    else:
        options = row["choices"]
        if isinstance(options, dict):  # ARC: {"text": [...], "label": ["A", "B", ...]}
            labels, options = list(options.get("label") or []), options.get("text")
        else:
            labels = [chr(ord("A") + i) for i in range(len(options))] if isinstance(options, list) else []
        answer = next(row[k] for k in ("label", "answer", "answerKey") if k in row)
        prompt, delimiter = f"Question: {row['question']}\nAnswer:", " "
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o for o in options):
        raise EvalInputError(f"{where}: expected a list of at least two non-empty string choices, got {options!r}")
    if not isinstance(prompt, str):
        raise EvalInputError(f"{where}: the context/question must be a string, got {prompt!r}")
    gold = _gold_index(answer, labels, len(options), where)
    return ChoiceItem(context=prompt.rstrip(" "), choices=[delimiter + o.strip() for o in options], gold=gold,
                      lengths=[len(o.strip()) for o in options])


def load_choice_task(spec: str, max_items: int | None = None) -> ChoiceTask:
    """Reads a cloze / multiple-choice task; `name=source` names it, otherwise the file stem does."""
    name, source = spec.split("=", 1) if "=" in spec.split(":", 1)[0] else (None, spec)
    if name is None:
        name = source.split(":", 1)[1] if source.startswith("builtin:") else Path(source.split("@")[0]).stem
    rows = read_rows(source, what=f"choice task {name!r}")
    if not rows:
        raise EvalInputError(f"choice task {name!r} ({source}): the file holds no items")
    layout = detect_layout(rows[0])
    if layout is None:
        expected = "; ".join(" + ".join(sorted(o)) for options in LAYOUTS.values() for o in options)
        raise EvalInputError(f"choice task {name!r} ({source}) row 0 has fields {sorted(rows[0])}; expected one of: "
                             f"{expected}")
    items = []
    for index, row in enumerate(rows[:max_items] if max_items else rows):
        if detect_layout(row) != layout:
            raise EvalInputError(f"choice task {name!r} ({source}) row {index}: fields {sorted(row)} do not match the "
                                 f"{layout} layout of row 0")
        items.append(to_choice_item(row, layout, f"choice task {name!r} ({source}) row {index}"))
    return ChoiceTask(name=name, source=source, layout=layout, items=items)


# -- held-out text ----------------------------------------------------------------------------------

def heldout_files(path: str) -> list[str]:
    """A clean stage folder means its validation split; otherwise a file, glob or folder of parquet/jsonl."""
    p = Path(path)
    if p.is_dir():
        validation = split_files(p, "validation")
        if validation:
            return validation
        for pattern in ("*.parquet", "*.jsonl", "*.txt"):
            files = sorted(glob.glob(str(p / pattern)))
            if files:
                return files
        raise EvalInputError(f"heldout_data {path!r}: folder has no validation/*.parquet, *.parquet, *.jsonl or *.txt")
    return _expand_files(path, "heldout_data")


def load_heldout_texts(path: str, text_field: str = "text", max_documents: int | None = None,
                       max_bytes: int | None = None) -> list[str]:
    """Held-out documents, up to max_documents and at most max_bytes UTF-8 bytes (the last document is cut to
    fit), taken at even steps over the whole set and kept in file order.

    Even steps, not the first ones: a clean stage's validation split is in source order (one kind of
    documentation after another), so its first 30 KB measured 2.04 bits per byte where the whole split measured
    1.79 for the same model (benchmarks/README.md, "Pretraining"): a prefix is a sample of one source."""
    texts: list[str] = []
    for file in heldout_files(path):
        if file.endswith(".txt"):
            rows = [{text_field: Path(file).read_text(encoding="utf-8")}]
        else:
            rows = read_rows(file, what="heldout_data")
        for index, row in enumerate(rows):
            if text_field not in row:
                raise EvalInputError(f"heldout_data {file!r} row {index}: no {text_field!r} field (fields: "
                                     f"{sorted(row)}); set text_field")
            if isinstance(row[text_field], str) and row[text_field].strip():
                texts.append(row[text_field])
    if not texts:
        raise EvalInputError(f"heldout_data {path!r}: no non-empty {text_field!r} texts (empty set)")
    if max_documents:
        texts = evenly_spaced(texts, max_documents)
    if max_bytes:
        mean_size = sum(len(t.encode("utf-8")) for t in texts) / len(texts)
        texts = evenly_spaced(texts, math.ceil(max_bytes / mean_size))
        kept, total = [], 0
        for text in texts:
            size = len(text.encode("utf-8"))
            if total + size > max_bytes:
                # cut the last document to the budget (at a character boundary) rather than skip it, so one
                # long document cannot blow the budget and a budget below the first document still scores text
                rest = text.encode("utf-8")[:max_bytes - total].decode("utf-8", errors="ignore")
                if rest.strip():
                    kept.append(rest)
                break
            kept.append(text)
            total += size
        texts = kept
    return texts


# -- QA and preferences -----------------------------------------------------------------------------

PROMPT_FIELDS = ("prompt", "question", "instruction")
ANSWER_FIELDS = ("answer", "answers", "completion", "response", "output")


def _message_text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value[-1]["content"]
    raise EvalInputError(f"{where}: expected a string or a list of chat messages, got {value!r}")


@dataclass
class QAItem:
    messages: list[dict[str, str]]  # the conversation up to the answer
    references: list[str]


def load_qa(spec: str, max_items: int | None = None) -> list[QAItem]:
    """QA items from `prompt|question|instruction` (+ optional `input`) and `answer|answers|completion|
    response|output` fields, or from `messages` (the last assistant turn is the reference)."""
    rows = read_rows(spec, what="qa_data")
    if not rows:
        raise EvalInputError(f"qa_data {spec!r}: the file holds no items (empty set)")
    items = []
    for index, row in enumerate(rows[:max_items] if max_items else rows):
        where = f"qa_data {spec!r} row {index}"
        if "messages" in row:
            messages = row["messages"]
            if not (isinstance(messages, list) and messages and messages[-1].get("role") == "assistant"):
                raise EvalInputError(f"{where}: 'messages' must be a list ending with an assistant message")
            items.append(QAItem(messages=list(messages[:-1]), references=[messages[-1]["content"]]))
            continue
        prompt_key = next((k for k in PROMPT_FIELDS if k in row), None)
        answer_key = next((k for k in ANSWER_FIELDS if k in row), None)
        if prompt_key is None or answer_key is None:
            raise EvalInputError(f"{where}: fields {sorted(row)}; expected 'messages', or one of {PROMPT_FIELDS} and "
                                 f"one of {ANSWER_FIELDS}")
        prompt = row[prompt_key]
        if isinstance(prompt, list):
            messages = list(prompt)
        else:
            text = _message_text(prompt, where)
            if row.get("input"):
                text = f"{text}\n\n{row['input']}"
            messages = [{"role": "user", "content": text}]
        answer = row[answer_key]
        references = [_message_text(a, where) for a in answer] if isinstance(answer, list) and answer and all(
            isinstance(a, str) for a in answer) else [_message_text(answer, where)]
        items.append(QAItem(messages=messages, references=references))
    return items


@dataclass
class PreferencePair:
    prompt: Any  # string or chat messages
    chosen: Any
    rejected: Any


def load_preferences(spec: str, max_items: int | None = None) -> list[PreferencePair]:
    """Pairs with `prompt`, `chosen`, `rejected` (TRL's DPO format, strings or chat messages)."""
    rows = read_rows(spec, what="preference_data")
    if not rows:
        raise EvalInputError(f"preference_data {spec!r}: the file holds no pairs (empty set)")
    pairs = []
    for index, row in enumerate(rows[:max_items] if max_items else rows):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise EvalInputError(f"preference_data {spec!r} row {index}: missing field(s) {missing}; expected "
                                 "prompt, chosen, rejected")
        pairs.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"]))
    return pairs


def chat_messages(value: Any, role: str) -> list[dict[str, str]]:
    return list(value) if isinstance(value, list) else [{"role": role, "content": str(value)}]

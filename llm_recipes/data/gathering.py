"""Gathering: stream every source of a recipe into parquet shards, resumably, with a report of what was skipped.

Sources are read one after another, each in a fixed order. After every shard is written,
`gather_state.json` records how many raw items of the current source have been consumed; a rerun of an
interrupted gather skips that many items and continues numbering shards where it stopped, so no
finished shard is lost or written twice. Memory holds one shard's buffer at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..fileio import atomic_write_json, replace_folder
from .documents import ShardWriter, Skipped
from .sources import SourceSpec, iter_source, keep_fraction

STATE_FILE = "gather_state.json"
REPORT_FILE = "gather_report.json"
EXAMPLES_PER_REASON = 5


@dataclass
class SourceProgress:
    """What one source has produced so far (saved after every shard, so a resumed run continues)."""

    name: str
    done: bool = False
    consumed: int = 0
    documents: int = 0
    bytes: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)  # documents kept with a caveat, e.g. not valid UTF-8
    note_examples: dict[str, list[str]] = field(default_factory=dict)
    dropped_by_fraction: int = 0
    stopped_by_cap: str = ""


def source_budgets(specs: list[SourceSpec], total_mb: float | None) -> list[float | None]:
    """Per-source MB caps: `total_mb` split by weight, tightened by each source's own `max_mb`."""
    budgets = []
    weight_sum = sum(s.weight for s in specs)
    for spec in specs:
        cap = spec.max_mb
        if total_mb:
            share = total_mb * spec.weight / weight_sum
            cap = share if cap is None else min(cap, share)
        budgets.append(cap)
    return budgets


def config_fingerprint(raw_sources: list, max_doc_chars: int, min_doc_chars: int, total_mb) -> str:
    blob = json.dumps([raw_sources, max_doc_chars, min_doc_chars, total_mb], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _clean_surrogates(text: str) -> str:
    # lone surrogates (from JSON escapes) cannot be stored as UTF-8; replace them instead of failing a shard
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def gather(raw_sources: list[dict], output_dir: str | Path, *, total_mb: float | None = None,
           max_doc_chars: int = 1_000_000, min_doc_chars: int = 1, shard_mb: float = 2.0, num_proc: int = 2,
           overwrite: bool = False, progress: bool = True, start: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Gathers documents from `raw_sources` into `output_dir/data/*.parquet` and writes `gather_report.json`.

    Args:
        raw_sources: the recipe's `sources:` list (mappings, see `SourceSpec`).
        output_dir: stage folder.
        total_mb: optional total size; split over sources by their `weight`.
        max_doc_chars: longer documents are skipped (reported as "document too large").
        min_doc_chars: shorter documents (after stripping whitespace) are skipped as "empty document".
        shard_mb: MB of text per parquet shard.
        num_proc: processes for parsing (python-docs).
        overwrite: start over even if a resumable state from another configuration exists.
        progress: show a tqdm bar.
        start: called once every source and the resume state have been checked, before anything is
            written (the stage clears its completion marker there).

    Returns:
        The report (also written to `gather_report.json`).
    """
    from tqdm.auto import tqdm

    if not isinstance(raw_sources, list) or not raw_sources:
        raise ValueError(f"sources must be a non-empty list of source mappings, got {raw_sources!r}")
    specs = [SourceSpec.from_dict(i, raw) for i, raw in enumerate(raw_sources)]
    output_dir = Path(output_dir)
    data_dir = output_dir / "data"
    state_path = output_dir / STATE_FILE
    fingerprint = config_fingerprint(raw_sources, max_doc_chars, min_doc_chars, total_mb)
    state = _check_state(state_path, fingerprint, overwrite)
    if start is not None:
        start()
    final_data_dir, final_state_path, staging = data_dir, state_path, None
    if overwrite and state is None:
        # the previous gather stays until this one has finished: write beside it, swap at the end (a run that
        # fails halfway leaves the old data as it was; its staging folder is removed at the next start)
        staging = output_dir / ".data.overwrite.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        data_dir, state_path = staging / "data", staging / STATE_FILE
        data_dir.mkdir(parents=True)
        state = {}
    progress_list = [SourceProgress(**p) for p in state.get("sources", [])] or [SourceProgress(s.name) for s in specs]
    budgets = source_budgets(specs, total_mb)
    started = time.time()

    def save_state():
        atomic_write_json(state_path, {"fingerprint": fingerprint, "sources": [vars(p) for p in progress_list]})

    bar = tqdm(unit="doc", desc="gather", disable=not progress, dynamic_ncols=True)
    for index, (spec, prog, budget) in enumerate(zip(specs, progress_list, budgets)):
        if prog.done:
            bar.update(prog.documents)
            continue
        bar.set_description(f"gather {spec.name}")
        writer = ShardWriter(data_dir, prefix=f"{index:03d}-{_slug(spec.name)}", shard_bytes=int(shard_mb * 2**20),
                             first_index=len(prog.shards))
        skipped, examples = Counter(prog.skipped), {k: list(v) for k, v in prog.skipped_examples.items()}
        notes, note_examples = Counter(prog.notes), {k: list(v) for k, v in prog.note_examples.items()}
        documents, nbytes, dropped = prog.documents, prog.bytes, prog.dropped_by_fraction
        resume_from = prog.consumed
        if resume_from:
            print(f"gather: resuming {spec.name!r} after {resume_from} items ({len(prog.shards)} shards kept)")
        consumed = 0
        for item in iter_source(spec, max_doc_chars, num_proc=num_proc):
            consumed += 1
            if consumed <= resume_from:
                continue
            if isinstance(item, dict):
                note = item.pop("note", "")
                if note:
                    notes[note] += 1
                    _add_example(note_examples, note, item["location"])
                item["text"] = _clean_surrogates(item["text"])
                if len(item["text"].strip()) < min_doc_chars:
                    item = Skipped("empty document", item["location"])
                elif len(item["text"]) > max_doc_chars:
                    item = Skipped("document too large", item["location"],
                                   f"{len(item['text'])} chars > {max_doc_chars}")
            if isinstance(item, Skipped):
                skipped[item.reason] += 1
                _add_example(examples, item.reason, f"{item.location} {item.detail}".strip())
                continue
            if not keep_fraction(item["id"], spec.fraction):
                dropped += 1
                continue
            size = len(item["text"].encode("utf-8"))
            if budget is not None and nbytes + size > budget * 2**20 and documents > 0:
                prog.stopped_by_cap = f"max_mb {budget:.2f}"
                break
            documents += 1
            nbytes += size
            bar.update(1)
            bar.set_postfix(MB=f"{nbytes / 2**20:.1f}", refresh=False)
            if writer.add(item):
                prog.consumed, prog.documents, prog.bytes = consumed, documents, nbytes
                prog.shards = prog.shards + writer.written[-1:]
                prog.skipped, prog.skipped_examples, prog.dropped_by_fraction = dict(skipped), examples, dropped
                prog.notes, prog.note_examples = dict(notes), note_examples
                save_state()
            if spec.max_documents is not None and documents >= spec.max_documents:
                prog.stopped_by_cap = f"max_documents {spec.max_documents}"
                break
        writer.flush()
        prog.shards = prog.shards + [name for name in writer.written if name not in prog.shards]
        prog.consumed, prog.documents, prog.bytes, prog.done = consumed, documents, nbytes, True
        prog.skipped, prog.skipped_examples, prog.dropped_by_fraction = dict(skipped), examples, dropped
        prog.notes, prog.note_examples = dict(notes), note_examples
        save_state()
    bar.close()
    if staging is not None:
        replace_folder(data_dir, final_data_dir)
        os.replace(state_path, final_state_path)
        shutil.rmtree(staging, ignore_errors=True)
    report = _report(specs, progress_list, budgets, time.time() - started)
    atomic_write_json(output_dir / REPORT_FILE, report)
    return report


def _add_example(examples: dict[str, list[str]], reason: str, where: str) -> None:
    ex = examples.setdefault(reason, [])
    if len(ex) < EXAMPLES_PER_REASON:
        ex.append(where)


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_")[:40] or "source"


def _check_state(state_path: Path, fingerprint: str, overwrite: bool) -> dict | None:
    """The state to resume ({} for a new gather); None when an overwrite must first remove a previous one.
    Reads only: a refused run changes nothing."""
    if not state_path.exists():
        return {}
    if overwrite:
        return None
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{state_path} is unreadable ({e}); set overwrite_output_dir: true to start over") from e
    if isinstance(state, dict) and state.get("fingerprint") == fingerprint:
        return state
    raise ValueError(f"{state_path} belongs to a gather with different sources or limits; "
                     "set overwrite_output_dir: true to start over, or use another output_dir")



def _report(specs, progress_list, budgets, seconds) -> dict[str, Any]:
    sources = []
    for spec, prog, budget in zip(specs, progress_list, budgets):
        sources.append({"name": spec.name, "type": spec.type, "documents": prog.documents, "bytes": prog.bytes,
                        "shards": prog.shards, "items_read": prog.consumed, "skipped": prog.skipped,
                        "skipped_examples": prog.skipped_examples, "notes": prog.notes,
                        "note_examples": prog.note_examples, "dropped_by_fraction": prog.dropped_by_fraction,
                        "fraction": spec.fraction, "weight": spec.weight, "budget_mb": budget,
                        "stopped_by_cap": prog.stopped_by_cap})
    total_skipped, total_notes = Counter(), Counter()
    for prog in progress_list:
        total_skipped.update(prog.skipped)
        total_notes.update(prog.notes)
    return {"documents": sum(p.documents for p in progress_list), "bytes": sum(p.bytes for p in progress_list),
            "shards": sum(len(p.shards) for p in progress_list), "skipped": dict(total_skipped),
            "notes": dict(total_notes), "sources": sources, "seconds": round(seconds, 2)}

"""`llm-recipes feedback`: turn the chat page's feedback into DPO and KTO datasets for fine-tuning.

    llm-recipes feedback --feedback_path runs/quickstart/serve --output_dir runs/quickstart/feedback
    llm-recipes dpo --config recipes/quickstart/dpo.yaml --dataset_name runs/quickstart/feedback/dpo.jsonl

Writes `dpo.jsonl` (prompt/chosen/rejected) and `kto.jsonl` (prompt/completion/label) in TRL's
conversational format, and `feedback_summary.json` with the counts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .cli import entry_point
from .config import parse_config
from .fileio import atomic_write_json, atomic_write_text
from .pipeline.envelope import StageRun
from .serving.feedback_store import open_readonly_rows
from .serving.preferences import feedback_to_datasets


@dataclass
class FeedbackConfig:
    feedback_path: str = field(default="runs/default/serve", metadata={
        "help": "the feedback.sqlite that `llm-recipes serve` writes, or the serve output_dir holding it; also "
                "accepted as the first bare argument"})
    output_dir: str = field(default="runs/default/feedback", metadata={
        "help": "where dpo.jsonl, kto.jsonl and feedback_summary.json are written"})
    max_pairs_per_prompt: int = field(default=8, metadata={
        "help": "cap on thumbs-up x thumbs-down DPO pairs from one conversation"})
    min_rows: int = field(default=0, metadata={
        "help": "fail (exit 1) when fewer than this many DPO pairs or KTO rows come out, e.g. before training"})


def config_classes() -> tuple[type, ...]:
    return (FeedbackConfig,)


def main(argv: list[str] | None = None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="feedback", positional="feedback_path")
    path = Path(cfg.feedback_path)
    if path.is_dir():
        path = path / "feedback.sqlite"
    try:
        rows = open_readonly_rows(path)
    except (FileNotFoundError, ValueError) as e:
        print(f"llm-recipes feedback: error: {e}", file=sys.stderr)
        return 2
    dpo, kto, counts = feedback_to_datasets(rows, max_pairs_per_prompt=cfg.max_pairs_per_prompt)
    run = StageRun("feedback", cfg.output_dir, cfg)
    out = run.start()  # the store was read: new files replace the old
    for name, records in (("dpo.jsonl", dpo), ("kto.jsonl", kto)):
        atomic_write_text(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    counts["source"] = str(path)
    atomic_write_json(out / "feedback_summary.json", counts)
    print(f"[feedback] {counts['rows']} feedback rows from {path} -> {len(dpo)} DPO pairs in {out / 'dpo.jsonl'}, "
          f"{len(kto)} KTO rows ({counts['kto_desirable']} thumbs up) in {out / 'kto.jsonl'}")
    if not dpo:
        # a DPO run on this file would train on nothing: say why, and what would give pairs
        print(f"[feedback] no DPO pairs: none of the {counts['rows']} feedback rows has a suggested better answer, "
              "and no prompt has both a thumbs-up and a thumbs-down answer. Use \"suggest a better answer\" on the "
              "chat page; "
              f"{'kto.jsonl can train KTO on the thumbs meanwhile' if kto else 'there is nothing to train on'}.",
              file=sys.stderr)
    if not dpo and not kto:
        print(f"llm-recipes feedback: error: {path} holds no usable feedback (no thumbs, no corrections): nothing to "
              "train on", file=sys.stderr)
        return 1
    if min(len(dpo), len(kto)) < cfg.min_rows:
        print(f"llm-recipes feedback: error: fewer than min_rows={cfg.min_rows} DPO pairs or KTO rows; collect more "
              "feedback first", file=sys.stderr)
        return 1
    run.complete(**{k: v for k, v in counts.items() if k != "source"})
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("feedback", main))

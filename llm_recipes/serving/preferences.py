"""Feedback rows -> training data: DPO pairs (`prompt`/`chosen`/`rejected`) and KTO rows
(`prompt`/`completion`/`label`), in TRL's conversational format.

Where the pairs come from:
- a suggested better answer is preferred over the answer it corrects (one DPO pair, and a KTO
  thumbs-up for the suggestion);
- for one conversation, every thumbed-up answer is preferred over every thumbed-down one;
- every thumb is a KTO row as it is.
When the same answer was rated more than once (a user changing their mind), the last rating counts.
"""

from __future__ import annotations

import json
from typing import Any, Iterable


def _turn(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def feedback_to_datasets(rows: Iterable[dict[str, Any]], max_pairs_per_prompt: int = 8
                         ) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Builds (dpo_rows, kto_rows, counts) from feedback store rows (oldest first).

    Args:
        rows: dicts with `messages` (the conversation before the answer), `completion`, `rating` (1, -1
            or None) and `suggestion` (str or None), as `FeedbackStore.rows()` yields them.
        max_pairs_per_prompt: cap on thumbs-up x thumbs-down pairs from one conversation, so one popular
            question cannot dominate the dataset.
    """
    ratings: dict[tuple[str, str], int] = {}  # (prompt key, completion) -> last rating
    prompts: dict[str, list[dict]] = {}
    suggestions: dict[tuple[str, str, str], None] = {}  # ordered set of (prompt key, suggestion, rejected answer)
    counts = {"rows": 0, "skipped": 0}
    for row in rows:
        counts["rows"] += 1
        messages, completion = row.get("messages"), row.get("completion")
        if not messages or not isinstance(completion, str) or messages[-1].get("role") == "assistant":
            counts["skipped"] += 1  # a prompt must end with the user's (or system's) turn
            continue
        key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
        prompts[key] = messages
        if row.get("rating") in (1, -1):
            ratings[(key, completion)] = row["rating"]
        suggestion = (row.get("suggestion") or "").strip()
        if suggestion and suggestion != completion.strip():
            suggestions[(key, suggestion, completion)] = None

    dpo, kto, seen_pairs = [], [], set()

    def add_pair(key: str, chosen: str, rejected: str) -> None:
        if (key, chosen, rejected) not in seen_pairs:
            seen_pairs.add((key, chosen, rejected))
            dpo.append({"prompt": prompts[key], "chosen": _turn(chosen), "rejected": _turn(rejected)})

    for key, suggestion, rejected in suggestions:
        add_pair(key, suggestion, rejected)
    by_prompt: dict[str, dict[int, list[str]]] = {}
    for (key, completion), rating in ratings.items():
        by_prompt.setdefault(key, {1: [], -1: []})[rating].append(completion)
    for key, rated in by_prompt.items():
        pairs = [(good, bad) for good in rated[1] for bad in rated[-1]][:max_pairs_per_prompt]
        for good, bad in pairs:
            add_pair(key, good, bad)

    kto_seen = set()
    for (key, completion), rating in ratings.items():
        kto_seen.add((key, completion))
        kto.append({"prompt": prompts[key], "completion": _turn(completion), "label": rating == 1})
    for key, suggestion, _ in suggestions:
        if (key, suggestion) not in kto_seen:
            kto_seen.add((key, suggestion))
            kto.append({"prompt": prompts[key], "completion": _turn(suggestion), "label": True})
    counts.update(dpo_pairs=len(dpo), kto_rows=len(kto), kto_desirable=sum(r["label"] for r in kto),
                  suggestions=len(suggestions))
    return dpo, kto, counts

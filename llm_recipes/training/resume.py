"""One resume resolver for every training stage, with one vocabulary (`config.RESUME_OFF`, `RESUME_LATEST`).

Pretraining checkpoints (`checkpoints/step-N/`, checked against their manifest) and the fine-tuning stages'
Trainer checkpoints (`checkpoint-N/`) differ only in how a folder is found and checked, so each stage passes
its candidate folders and its check; the rules are here once:
- unset or an off word: start fresh;
- a latest word: the newest candidate that passes its check; broken newer ones are reported and skipped;
  none at all: start fresh; some, but none good: an error (starting over silently would later rotate
  them away), saying how to start over on purpose;
- anything else is a path that must pass the check (an explicit request is never silently replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..config import RESUME_LATEST, RESUME_OFF


def resolve_resume(value: str | None, checkpoints: list[Path], problem: Callable[[Path], str | None], *,
                   where: str, start_over: str, error: type[Exception],
                   warn: Callable[[str], None] = print) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start (see the module docstring).

    Args:
        value: the stage's `resume_from_checkpoint`.
        checkpoints: the stage's checkpoint folders, oldest first.
        problem: what makes a folder unusable, as a phrase ("is partial: ..."), or None when it is good.
        where: the folder that holds the checkpoints (for messages).
        start_over: how to start over on purpose (for the all-broken error).
        error: the exception type the stage reports bad input with.
    """
    if value is None or str(value).lower() in ("", *RESUME_OFF):
        return None
    if str(value).lower() not in RESUME_LATEST:
        found = problem(Path(value))
        if found:
            raise error(f"resume_from_checkpoint {str(value)!r} {found}")
        return Path(value)
    problems = []
    for folder in reversed(checkpoints):
        found = problem(folder)
        if found is None:
            return folder
        problems.append(f"{folder.name} {found}")
        warn(f"skipping checkpoint {str(folder)!r}: {found}")
    if problems:
        raise error(f"none of the {len(problems)} checkpoint(s) in {where!r} can be resumed ("
                    + "; ".join(problems[:3]) + (" ..." if len(problems) > 3 else "") + f"): {start_over}")
    return None

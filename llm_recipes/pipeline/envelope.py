"""The envelope every stage runs in, in one order:

    run = StageRun("export", cfg.output_dir, cfg)   # nothing on disk changes yet
    ... check the whole config and every input ...
    run.start()          # leftovers of killed writes removed, completion marker cleared,
                         # resolved_config.yaml + run_info.json written
    ... the work ...
    run.complete(**info) # stage_complete.json, the very last act, on success only

A refused run (bad config, missing input) never reaches `start()`, so a finished stage stays as it was;
a run that fails after `start()` leaves no marker, so `llm-recipes run` redoes it. Stages whose work
replaces their whole output folder (export) keep the record with `RECORD_FILES`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import save_resolved_config
from ..fileio import atomic_write_text, clear_complete, mark_complete, remove_leftovers

# what start() writes into the output folder besides the work itself
RECORD_FILES = ("resolved_config.yaml", "run_info.json")


class StageRun:
    """One run of one stage into its output folder (see the module docstring for the order)."""

    def __init__(self, stage: str, output_dir: str | os.PathLike, *configs, secrets: tuple[str, ...] = ()):
        self.stage, self.output_dir, self.configs = stage, Path(output_dir), configs
        self.secrets = tuple(s for s in secrets if s)  # values masked in run_info.json (an --api_key)
        self.started = False

    def start(self) -> Path:
        """Begins replacing the previous output; call it once every input has been checked. Returns the
        output folder. A second call does nothing."""
        if not self.started:
            remove_leftovers(self.output_dir)
            clear_complete(self.output_dir)
            save_resolved_config(self.output_dir, *self.configs, stage=self.stage)
            self._mask_secrets()
            self.started = True
        return self.output_dir

    def complete(self, **info) -> None:
        """Marks the output finished (what `llm-recipes run` skips on the next run)."""
        if not self.started:
            raise RuntimeError(f"stage {self.stage!r}: complete() before start()")
        mark_complete(self.output_dir, **info)

    def _mask_secrets(self) -> None:
        """run_info.json records the command line; a secret given there (--api_key) must not land on disk."""
        path = self.output_dir / "run_info.json"
        text = path.read_text(encoding="utf-8")
        masked = text
        for secret in self.secrets:
            masked = masked.replace(json.dumps(secret)[1:-1], "***")
        if masked != text:
            atomic_write_text(path, masked)

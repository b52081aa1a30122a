"""Running a recipe folder: every stage YAML in pipeline order, each in its own process.

Each stage runs as `python -m llm_recipes.<stage> --config <recipe>/<stage>.yaml` (training stages
under `accelerate launch` when asked), with `LLM_RECIPES_RUN_DIR` set so `${run_dir}` in the recipes
points at this run. A separate process per stage keeps Accelerate/TRL global state and memory from
leaking between stages, and is exactly what a user would type by hand.

A stage whose output folder holds `stage_complete.json` is skipped (`force` redoes it); a stage that
was interrupted has no marker and runs again, resuming from its own checkpoints where it has them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import RUN_DIR_ENV, load_yaml_config
from ..fileio import atomic_write_text, clear_complete, is_complete
from .stages import Stage, recipe_stages


class PipelineError(RuntimeError):
    pass


@dataclass
class PlannedStage:
    stage: Stage
    recipe: Path
    output_dir: Path

    @property
    def name(self) -> str:
        return self.stage.recipe


def plan(recipe_dir: str | os.PathLike, run_dir: str | os.PathLike,
         stages: list[str] | None = None) -> list[PlannedStage]:
    """The stages a recipe folder defines, in pipeline order, optionally narrowed to `stages`."""
    recipe_dir = Path(recipe_dir)
    if not recipe_dir.is_dir():
        raise PipelineError(f"recipe folder {str(recipe_dir)!r} does not exist (expected e.g. recipes/quickstart)")
    known = [s.recipe for s in recipe_stages()]
    if stages:
        unknown = [s for s in stages if s.replace("-", "_") not in known]
        if unknown:
            raise PipelineError(f"unknown stage(s) {', '.join(unknown)}; expected some of: {', '.join(known)}")
        stages = [s.replace("-", "_") for s in stages]
    planned = []
    for stage in recipe_stages():
        name = stage.recipe
        recipe = recipe_dir / f"{name}.yaml"
        if not recipe.is_file() or (stages and name not in stages):
            continue
        if not stages and stage.optional:
            continue
        values = load_yaml_config(recipe, run_dir=run_dir)
        output_dir = values.get("output_dir") or str(Path(run_dir) / name)
        planned.append(PlannedStage(stage, recipe, Path(output_dir)))
    if stages:
        missing = [s for s in stages if s not in {p.name for p in planned}]
        if missing:
            raise PipelineError(f"recipe folder {str(recipe_dir)!r} has no YAML for stage(s): {', '.join(missing)}")
    if not planned:
        raise PipelineError(
            f"recipe folder {str(recipe_dir)!r} holds no stage YAML (expected gather.yaml, clean.yaml, ...)")
    return planned


def stage_command(stage: PlannedStage, launcher: str, accelerate_config: str | None) -> list[str]:
    module = f"llm_recipes.{stage.stage.module}"
    if launcher == "accelerate" and stage.stage.training:
        command = [sys.executable, "-m", "accelerate.commands.launch"]
        if accelerate_config:
            command += ["--config_file", accelerate_config]
        return command + ["-m", module, "--config", str(stage.recipe)]
    return [sys.executable, "-m", module, "--config", str(stage.recipe)]


def run_stage(stage: PlannedStage, command: list[str], run_dir: Path, log_path: Path) -> float:
    """Runs one stage, streaming its output to the console and to its log file; returns seconds taken."""
    env = {**os.environ, RUN_DIR_ENV: str(run_dir), "PYTHONUNBUFFERED": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert process.stdout is not None
        try:
            for chunk in iter(lambda: process.stdout.read1(4096), b""):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log.write(chunk)
        except KeyboardInterrupt:
            # Ctrl+C reached the stage too (same process group): let it finish shutting down
            if not stage.stage.service:
                process.wait()
                raise
            rest = process.stdout.read()  # the service's goodbye: what it stored, where
            sys.stdout.buffer.write(rest)
            sys.stdout.flush()
            log.write(rest)
        returncode = process.wait()
    if returncode != 0:
        raise PipelineError(f"stage {stage.name!r} failed (exit {returncode}); its log is {log_path}. "
                            f"Fix the cause and re-run: finished stages are skipped, this one resumes.")
    if not is_complete(stage.output_dir):
        raise PipelineError(f"stage {stage.name!r} exited 0 but did not mark {stage.output_dir} complete")
    return time.time() - start


def run_recipe(recipe_dir, run_dir, stages=None, force=False, launcher="python", accelerate_config=None) -> dict:
    """Runs (or skips) every planned stage; returns and saves `run_summary.json` in run_dir."""
    run_dir = Path(run_dir)
    planned = plan(recipe_dir, run_dir, stages)
    summary_path = run_dir / "run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"stages": {}}
    summary.update(recipe=str(recipe_dir), run_dir=str(run_dir))
    print(f"[run] recipe {recipe_dir} -> {run_dir}: {', '.join(p.name for p in planned)}", flush=True)
    for stage in planned:
        if is_complete(stage.output_dir) and not force and not stage.stage.service:
            print(f"[run] {stage.name}: complete in {stage.output_dir}, skipped (--force redoes it)", flush=True)
            summary["stages"].setdefault(stage.name, {})["skipped_last_run"] = True
            continue
        if force:
            remove_stage_output(stage.output_dir)
        command = stage_command(stage, launcher, accelerate_config)
        print(f"[run] {stage.name}: {' '.join(command)}", flush=True)
        seconds = run_stage(stage, command, run_dir, run_dir / "logs" / f"{stage.name}.log")
        info = json.loads((stage.output_dir / "stage_complete.json").read_text())
        summary["stages"][stage.name] = {"seconds": round(seconds, 1), "output_dir": str(stage.output_dir),
                                         "skipped_last_run": False,
                                         **{k: v for k, v in info.items() if k != "finished_at"}}
        write_summary(summary_path, summary)
        print(f"[run] {stage.name}: done in {seconds:.0f} s -> {stage.output_dir}", flush=True)
    write_summary(summary_path, summary)
    return summary


def remove_stage_output(output_dir: Path) -> None:
    """`--force` redoes a stage from scratch: its old folder goes, checkpoints included (resuming a
    checkpoint made with other settings is exactly what --force must not do). Only a folder a stage
    wrote (it holds resolved_config.yaml) is removed, never an arbitrary path a recipe names."""
    if (output_dir / "resolved_config.yaml").is_file():
        shutil.rmtree(output_dir)
    else:
        clear_complete(output_dir)


def write_summary(path: Path, summary: dict) -> None:
    # stages keep pipeline order (atomic_write_json would sort them by name)
    order = {s.recipe: i for i, s in enumerate(recipe_stages())}
    summary["stages"] = dict(sorted(summary["stages"].items(), key=lambda kv: order.get(kv[0], 99)))
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")

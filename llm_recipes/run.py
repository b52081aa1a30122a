"""`llm-recipes run RECIPE_DIR`: every stage of a recipe folder in order, then the report card.

    llm-recipes run recipes/quickstart                      # all stages; finished ones are skipped
    llm-recipes run recipes/quickstart --force              # redo everything
    llm-recipes run recipes/quickstart --stages pretrain,sft
    llm-recipes run recipes/debug --run_dir /tmp/debug-run
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .cli import entry_point
from .config import parse_config
from .pipeline.report_card import write_report_card
from .pipeline.runner import PipelineError, run_recipe


@dataclass
class RunConfig:
    recipe_dir: str = field(metadata={"help": "recipe folder with one YAML per stage (e.g. recipes/quickstart)"})
    run_dir: str | None = field(
        default=None, metadata={"help": "where stage outputs go; default runs/<recipe folder name>"})
    stages: str | None = field(
        default=None, metadata={"help": "comma-separated stages to run (default: all the recipe defines)"})
    force: bool = field(default=False, metadata={"help": "redo stages even if their output is complete"})
    launcher: str = field(default="python", metadata={"help": "'python' (one process per stage) or 'accelerate' "
                                                               "(training stages under accelerate launch)",
                                                       "choices": ["python", "accelerate"]})
    accelerate_config: str | None = field(default=None, metadata={"help": "accelerate config for launcher=accelerate "
                                                                          "(default: accelerate's own default)"})
    report: bool = field(default=True, metadata={"help": "write report.md with plots into run_dir at the end"})


def config_classes() -> tuple[type, ...]:
    return (RunConfig,)


def main(argv=None) -> int:
    (cfg,) = parse_config(config_classes(), argv, stage="run", positional="recipe_dir")

    run_dir = Path(cfg.run_dir or Path("runs") / Path(cfg.recipe_dir).resolve().name)
    stages = [s.strip() for s in cfg.stages.split(",") if s.strip()] if cfg.stages else None
    try:
        run_recipe(cfg.recipe_dir, run_dir, stages=stages, force=cfg.force, launcher=cfg.launcher,
                   accelerate_config=cfg.accelerate_config)
    except PipelineError as e:
        print(f"llm-recipes run: error: {e}", file=sys.stderr)
        return 1
    if cfg.report:
        path = write_report_card(run_dir, recipe_dir=cfg.recipe_dir)
        print(f"[run] report card: {path}")
    print(f"[run] finished: everything is in {run_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(entry_point("run", main))

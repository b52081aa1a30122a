"""`llm-recipes <stage> [--config recipe.yaml] [--key value ...]`: one subcommand per stage.

The stages come from the registry (`llm_recipes.pipeline.stages`); each is a module `llm_recipes.<module>`
with a `main(argv)`. The CLI only dispatches, so `python -m llm_recipes.pretrain ...` and
`accelerate launch -m llm_recipes.pretrain ...` run the very same code (both through `entry_point`). A stage
module is imported only when its stage runs, so `llm-recipes --help` stays quick.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from . import __version__
from .config import ConfigError
from .pipeline.stages import BY_NAME, STAGES


def entry_point(stage: str, main: Callable[[], int | None]) -> int:
    """Runs a stage's `main()` as its `python -m` entry point: a config error prints one line naming the
    stage and exits 2, as `llm-recipes <stage>` does, instead of a traceback from every process."""
    try:
        return int(main() or 0)
    except ConfigError as e:
        print(f"llm-recipes {stage}: error: {e}", file=sys.stderr)
        return 2


def usage() -> str:
    width = max(len(s.name) for s in STAGES)
    lines = ["usage: llm-recipes <stage> [--config recipe.yaml] [--key value ...]", "", "stages:"]
    lines += [f"  {s.name.ljust(width)}  {s.description}" for s in STAGES]
    lines += ["", "`llm-recipes <stage> --help` lists a stage's keys."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BY_NAME:
        print(f"llm-recipes: unknown stage {name!r}; expected one of: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    module_name = f"llm_recipes.{BY_NAME[name].module}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        print(f"llm-recipes: stage {name!r} is not built yet (no module {module_name})", file=sys.stderr)
        return 3
    return entry_point(name, lambda: module.main(rest))


if __name__ == "__main__":
    sys.exit(main())

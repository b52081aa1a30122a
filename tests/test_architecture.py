"""The package's layering, read from the source (issue 19): the top of `llm_recipes/` holds only stage entry
points plus cli, config and fileio; libraries never import a stage or the launcher; serving never imports
training; the model imports only torch, transformers and the standard library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from llm_recipes.pipeline.stages import STAGES

PACKAGE = Path(__file__).resolve().parent.parent / "llm_recipes"
STAGE_MODULES = {f"llm_recipes.{s.module}" for s in STAGES}
TOP_LEVEL_LIBRARY = {"llm_recipes.cli", "llm_recipes.config", "llm_recipes.fileio", "llm_recipes.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a file imports (relative imports resolved; `from x import y` gives x and x.y)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "lm_eval_tasks" not in p.parts)


def test_the_top_level_holds_only_stages_cli_config_and_fileio():
    top = {f"llm_recipes.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert top - STAGE_MODULES - TOP_LEVEL_LIBRARY == set()
    assert STAGE_MODULES <= top


@pytest.mark.parametrize("path", [p for p in SOURCES if len(p.relative_to(PACKAGE).parts) > 1],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_libraries_import_no_stage_and_no_launcher(path):
    wrong = imported_modules(path) & (STAGE_MODULES | {"llm_recipes.cli"})
    assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


def test_serving_never_imports_training():
    for path in (PACKAGE / "serving").rglob("*.py"):
        wrong = {m for m in imported_modules(path) if m.startswith(("llm_recipes.training", "llm_recipes.finetuning"))}
        assert not wrong, f"{path.relative_to(PACKAGE)} imports {sorted(wrong)}"


def test_the_model_imports_only_torch_transformers_and_the_standard_library():
    for path in (PACKAGE / "model").rglob("*.py"):
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top in ("torch", "transformers", "__future__") or top in sys.stdlib_module_names or \
                name.startswith("llm_recipes.model"), f"{path.relative_to(PACKAGE)} imports {name}"

"""The stage registry is the one place stages are declared: the CLI, the runner, the docs' stage table and
every entry module agree with it; the stage envelope keeps its order (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_recipes import cli
from llm_recipes.finetuning.methods import METHODS
from llm_recipes.pipeline import stages
from llm_recipes.pipeline.envelope import StageRun

ROOT = Path(__file__).resolve().parent.parent


def test_cli_help_lists_the_registry(capsys):
    assert cli.main(["--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == [s.name for s in stages.STAGES]


@pytest.mark.parametrize("stage", stages.STAGES, ids=lambda s: s.name)
def test_every_entry_module_exposes_main_and_its_config_classes(stage):
    module = stage.entry_module()
    assert callable(module.main)
    classes = stage.config_classes()
    assert classes and all(isinstance(c, type) for c in classes)


def test_each_fine_tuning_method_is_a_stage_with_its_trl_config():
    finetuning = [s for s in stages.STAGES if s.kind == stages.FINETUNING]
    assert [s.name for s in finetuning] == [m.name for m in METHODS]
    for m in METHODS:
        assert stages.stage(m.name).config_classes()[-1] is m.config_class()
        assert m.trainer_class().__name__.endswith("Trainer")


def test_docs_stage_table_is_the_registry():
    """docs/architecture.md carries the table `stages.stage_table()` makes; regenerate it with
    `python -c "from llm_recipes.pipeline.stages import stage_table; print(stage_table())"`."""
    assert stages.stage_table() in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def test_envelope_order_and_a_refused_run_leaves_the_last_one(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        output_dir: str
        steps: int = 1

    out = tmp_path / "stage"
    first = StageRun("demo", out, Cfg(str(out)))
    with pytest.raises(RuntimeError):
        first.complete()  # complete() before start() is a bug in the stage
    first.start()
    (out / ".result.json.x1.tmp").write_text("a killed write")
    first.complete(rows=3)
    assert json.loads((out / "stage_complete.json").read_text())["rows"] == 3

    # a new run that is refused before start() leaves the finished one as it was
    second = StageRun("demo", out, Cfg(str(out), steps=2))
    assert (out / "stage_complete.json").is_file() and "steps: 1" in (out / "resolved_config.yaml").read_text()
    # start(): leftovers gone, marker cleared, this run's config written; a second start() changes nothing
    second.start()
    assert not (out / "stage_complete.json").exists() and not (out / ".result.json.x1.tmp").exists()
    assert "steps: 2" in (out / "resolved_config.yaml").read_text()
    assert json.loads((out / "run_info.json").read_text())["stage"] == "demo"
    second.start()
    second.complete()
    assert (out / "stage_complete.json").is_file()


def test_envelope_masks_secrets_in_run_info(tmp_path, monkeypatch):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        output_dir: str

    monkeypatch.setattr("sys.argv", ["llm-recipes", "serve", "--api_key", "s3cret", "--note", "key=s3cret"])
    StageRun("serve", tmp_path, Cfg(str(tmp_path)), secrets=("s3cret",)).start()
    assert "s3cret" not in (tmp_path / "run_info.json").read_text()


def test_unknown_recipe_stage_is_named():
    with pytest.raises(KeyError):
        stages.stage("pretrian")
    assert stages.stage("train_tokenizer") is stages.stage("train-tokenizer")

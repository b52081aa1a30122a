"""The `run` stage's planning and bad input (the end-to-end run is in test_debug_recipe.py)."""

import pytest

from llm_recipes import cli
from llm_recipes.pipeline.runner import PipelineError, plan


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_plan_orders_stages_and_expands_run_dir(tmp_path):
    recipe = tmp_path / "myrun"
    write(recipe / "pretrain.yaml", "output_dir: ${run_dir}/pretrain\n")
    write(recipe / "gather.yaml", "output_dir: ${run_dir}/gather\n")
    write(recipe / "README.md", "not a stage\n")
    planned = plan(recipe, tmp_path / "out")
    assert [p.name for p in planned] == ["gather", "pretrain"]
    assert planned[1].output_dir == tmp_path / "out" / "pretrain"
    assert [p.name for p in plan(recipe, tmp_path / "out", ["pretrain"])] == ["pretrain"]


def test_plan_bad_input(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        plan(tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="holds no stage YAML"):
        plan(tmp_path / "empty", tmp_path / "out")
    write(tmp_path / "r" / "gather.yaml", "output_dir: x\n")
    with pytest.raises(PipelineError, match="unknown stage"):
        plan(tmp_path / "r", tmp_path / "out", ["pretrian"])
    with pytest.raises(PipelineError, match="has no YAML for stage"):
        plan(tmp_path / "r", tmp_path / "out", ["sft"])


def test_run_cli_reports_missing_recipe(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_optional_stages_run_only_when_named(tmp_path):
    recipe = tmp_path / "r"
    write(recipe / "dpo.yaml", "output_dir: ${run_dir}/dpo\n")
    write(recipe / "kto.yaml", "output_dir: ${run_dir}/kto\n")
    assert [p.name for p in plan(recipe, tmp_path / "out")] == ["dpo"]
    assert [p.name for p in plan(recipe, tmp_path / "out", ["kto"])] == ["kto"]
    # serving is on request, and so is turning its feedback into datasets
    write(recipe / "serve.yaml", "output_dir: ${run_dir}/serve\nmodel_path: ${run_dir}/dpo/final\n")
    write(recipe / "feedback.yaml", "output_dir: ${run_dir}/feedback\n")
    assert [p.name for p in plan(recipe, tmp_path / "out")] == ["dpo"]
    assert [p.name for p in plan(recipe, tmp_path / "out", ["serve"])] == ["serve"]
    assert [p.name for p in plan(recipe, tmp_path / "out", ["feedback", "dpo"])] == ["dpo", "feedback"]


def test_force_removes_only_stage_folders(tmp_path):
    from llm_recipes.pipeline.runner import remove_stage_output

    stage = tmp_path / "pretrain"
    (stage / "checkpoints" / "step-1").mkdir(parents=True)
    (stage / "resolved_config.yaml").write_text("x: 1\n")
    (stage / "stage_complete.json").write_text("{}")
    remove_stage_output(stage)
    assert not stage.exists()
    other = tmp_path / "not_a_stage"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    (other / "stage_complete.json").write_text("{}")
    remove_stage_output(other)
    assert (other / "precious.txt").is_file() and not (other / "stage_complete.json").exists()

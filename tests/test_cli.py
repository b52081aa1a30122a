"""The command-line contract: dispatch, config parsing, unknown keys, resolved config."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from llm_recipes import cli
from llm_recipes.config import ConfigError, parse_config, save_resolved_config


@dataclasses.dataclass
class DemoConfig:
    output_dir: str = dataclasses.field(metadata={"help": "where to write"})
    learning_rate: float = dataclasses.field(default=1e-3, metadata={"help": "peak learning rate"})
    max_steps: int = dataclasses.field(default=10, metadata={"help": "optimizer steps"})
    use_thing: bool = dataclasses.field(default=True, metadata={"help": "a switch"})


def test_yaml_then_cli_override(tmp_path):
    recipe = tmp_path / "demo" / "stage.yaml"
    recipe.parent.mkdir()
    recipe.write_text("output_dir: ${run_dir}/stage\nlearning_rate: 0.01\nmax_steps: 5\n")
    (cfg,) = parse_config([DemoConfig], ["--config", str(recipe), "--max_steps", "7"], stage="demo")
    assert cfg.learning_rate == 0.01 and cfg.max_steps == 7
    assert cfg.output_dir == "runs/demo/stage"  # ${run_dir} = runs/<recipe folder>


def test_machine_defaults_yield_to_recipe_and_cli(tmp_path):
    """`defaults` (e.g. bf16 where there is a GPU) replace the class defaults; the recipe and the CLI beat them."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: x\nlearning_rate: 0.01\n")
    defaults = {"learning_rate": 0.5, "max_steps": 3, "use_thing": False}
    (cfg,) = parse_config([DemoConfig], ["--config", str(recipe), "--max_steps", "4"], stage="demo", defaults=defaults)
    assert (cfg.learning_rate, cfg.max_steps, cfg.use_thing) == (0.01, 4, False)
    (cfg,) = parse_config([DemoConfig], ["--output_dir", "y"], stage="demo", defaults=defaults)
    assert (cfg.learning_rate, cfg.max_steps, cfg.use_thing) == (0.5, 3, False)


def test_outputs_of_model_stages_default_beside_the_model_run(tmp_path):
    from llm_recipes.config import beside_model

    (tmp_path / "run" / "dpo" / "final").mkdir(parents=True)
    assert beside_model(str(tmp_path / "run" / "dpo" / "final"), "serve") == str(tmp_path / "run" / "serve")
    assert beside_model("someone/hub-model", "push") == "runs/default/push"
    assert beside_model(str(tmp_path / "run" / "dpo"), "export") == "runs/default/export"  # not a stage's final/


def test_unknown_yaml_key_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: x\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lerning_rate'.*did you mean 'learning_rate'"):
        parse_config([DemoConfig], ["--config", str(recipe)], stage="demo")


def test_unknown_cli_flag_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'max_stepz'"):
        parse_config([DemoConfig], ["--output_dir", "x", "--max_stepz", "3"], stage="demo")


def test_flag_prefixes_are_not_accepted():
    with pytest.raises(ConfigError, match=r"unknown key 'learning_r'"):
        parse_config([DemoConfig], ["--output_dir", "x", "--learning_r", "0.1"], stage="demo")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config([DemoConfig], ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        parse_config([DemoConfig], ["--config", str(bad)])


def test_positional_argument():
    (cfg,) = parse_config([DemoConfig], ["some/dir", "--max_steps", "2"], positional="output_dir")
    assert cfg.output_dir == "some/dir" and cfg.max_steps == 2


def test_resolved_config_round_trips(tmp_path):
    (cfg,) = parse_config([DemoConfig], ["--output_dir", str(tmp_path), "--no_use_thing"])
    path = save_resolved_config(tmp_path, cfg, stage="demo")
    saved = yaml.safe_load(path.read_text())
    assert saved == dataclasses.asdict(cfg)
    (again,) = parse_config([DemoConfig], ["--config", str(path)])
    assert again == cfg
    assert (tmp_path / "run_info.json").is_file()


def test_cli_lists_every_stage(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for stage in ["gather", "clean", "train-tokenizer", "pretrain", "sft", "dpo", "kto", "evaluate", "push",
                  "serve", "export", "run"]:
        assert stage in out


def test_cli_unknown_stage(capsys):
    assert cli.main(["pretrian"]) == 2
    assert "unknown stage 'pretrian'" in capsys.readouterr().err


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "llm_recipes", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "train-tokenizer" in out.stdout


@pytest.mark.parametrize("module, stage", [("pretrain", "pretrain"), ("train_tokenizer", "train-tokenizer")])
def test_module_entry_point_reports_config_errors_in_one_line(tmp_path, module, stage):
    """`python -m llm_recipes.<stage>` is what `accelerate launch -m` runs: a bad recipe is one line, exit 2."""
    out = subprocess.run([sys.executable, "-m", f"llm_recipes.{module}", "--config", str(tmp_path / "missing.yaml")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"llm-recipes {stage}: error: config file {str(tmp_path / 'missing.yaml')!r} does not exist "
        "(expected a YAML recipe file)"]


def test_secrets_are_masked_in_run_info():
    from llm_recipes.config import mask_secrets

    assert mask_secrets(["x", "--api_key", "s3cret", "--token=abc", "--max_steps", "3"]) == [
        "x", "--api_key", "***", "--token=***", "--max_steps", "3"]

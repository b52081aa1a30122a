"""Stage configuration: dataclasses parsed from a YAML recipe, overridden by `--key value` flags.

Every stage entry point does the same three things:

    cfg, = parse_config([PretrainConfig], argv, stage="pretrain")   # YAML + CLI, unknown keys rejected
    ...
    save_resolved_config(cfg.output_dir, cfg, stage="pretrain")     # what it ran with, next to its artifacts

Parsing goes through `transformers.HfArgumentParser` so TRL's and transformers' own config
dataclasses (`SFTConfig`, `DPOConfig`, ...) work unchanged next to ours, with their help strings.
Unlike TRL's default we never ignore a key we don't know: a misspelled `lerning_rate` in a recipe
would otherwise silently train with the default.

Strings in a recipe may contain `${run_dir}`: it expands to `$LLM_RECIPES_RUN_DIR` when set (the `run`
stage sets it) and otherwise to `runs/<recipe folder name>`, so `recipes/quickstart/pretrain.yaml`
reads the tokenizer from `runs/quickstart/tokenizer` whether it runs alone or as part of `run`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .fileio import atomic_write_text

RUN_DIR_ENV = "LLM_RECIPES_RUN_DIR"


class ConfigError(ValueError):
    """A recipe or a command line that does not match the stage's configuration."""


def default_run_dir(config_path: str | os.PathLike | None) -> str:
    if os.environ.get(RUN_DIR_ENV):
        return os.environ[RUN_DIR_ENV]
    if config_path is None:
        return "runs/default"
    return str(Path("runs") / Path(config_path).resolve().parent.name)


def beside_model(model_path: str, stage: str) -> str:
    """Default output folder of a stage that works on a trained model (serve, push, export): next to the
    run that made it (`runs/quickstart/dpo/final` -> `runs/quickstart/<stage>`), else `runs/default/<stage>`."""
    path = Path(model_path)
    if path.name == "final" and path.parent.parent.is_dir():
        return str(path.parent.parent / stage)
    return str(Path("runs") / "default" / stage)


def _expand(value: Any, run_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace("${run_dir}", run_dir)
    if isinstance(value, list):
        return [_expand(v, run_dir) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, run_dir) for k, v in value.items()}
    return value


def load_yaml_config(path: str | os.PathLike, run_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Reads a recipe YAML into a flat mapping, with `${run_dir}` expanded (to `run_dir` when given,
    else as `default_run_dir` says)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (expected a YAML recipe file)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    return _expand(data, str(run_dir) if run_dir is not None else default_run_dir(path))


def _split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    config_path, rest, i = None, [], 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a path to a YAML recipe")
            config_path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config_path, rest


def config_fields(config_classes: Sequence[type]) -> set[str]:
    return {f.name for cls in config_classes for f in dataclasses.fields(cls) if f.init}


def check_keys(keys, config_classes: Sequence[type], where: str, stage: str) -> None:
    """Raises a ConfigError naming the first key no config class knows, with a close match if any."""
    known = config_fields(config_classes)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r} for stage {stage!r}{hint}")


def parse_config(config_classes: Sequence[type], argv: Sequence[str] | None = None, stage: str = "stage",
                 positional: str | None = None, defaults: dict[str, Any] | None = None):
    """Parses `--config recipe.yaml` plus `--key value` overrides into one instance per config class.

    Args:
        config_classes: dataclass types; their fields together are the stage's keys.
        argv: command line (without the program name); defaults to `sys.argv[1:]`.
        stage: stage name, used in error messages.
        positional: name of a field that a leading bare argument fills (`llm-recipes serve DIR` is
            `--model_path DIR` when positional="model_path").
        defaults: values that replace the classes' own defaults (e.g. chosen for this machine); the recipe
            and the command line still override them.

    Returns:
        A tuple with one instance per class, in order.
    """
    from transformers import HfArgumentParser

    argv = sys.argv[1:] if argv is None else list(argv)
    config_path, rest = _split_config_flag(argv)
    if positional and rest and not rest[0].startswith("-"):
        rest = [f"--{positional}", rest[0], *rest[1:]]
    parser = HfArgumentParser(
        list(config_classes), prog=f"llm-recipes {stage}", allow_abbrev=False,
        description="Options come from --config recipe.yaml (a YAML mapping of the keys below); "
                    "--key value flags override the recipe.",
    )
    values: dict[str, Any] = dict(defaults or {})
    if config_path is not None:
        recipe = load_yaml_config(config_path)
        check_keys(recipe, config_classes, f"config file {config_path!r}", stage)
        values.update(recipe)
    # YAML values become argparse defaults, so a CLI flag still wins; a required field given in YAML
    # is no longer required on the command line.
    for action in parser._actions:
        if action.dest in values:
            action.default = values[action.dest]
            action.required = False
    *configs, leftover = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if leftover:
        flags = [a[2:].split("=", 1)[0] for a in leftover if a.startswith("--")]
        if flags:
            check_keys(flags, config_classes, "command line", stage)
        raise ConfigError(f"command line: unexpected arguments for stage {stage!r}: {' '.join(leftover)}")
    return tuple(configs)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(config_to_dict(value))
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def config_to_dict(config) -> dict[str, Any]:
    """The init fields of a config dataclass as plain YAML-able values (what a recipe would say)."""
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init and hasattr(config, f.name)}


def save_resolved_config(output_dir: str | os.PathLike, *configs, stage: str) -> Path:
    """Writes `resolved_config.yaml` (re-runnable with `--config`) and `run_info.json` into output_dir."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {}
    for cfg in configs:
        merged.update(config_to_dict(cfg))
    path = output_dir / "resolved_config.yaml"
    atomic_write_text(path, f"# resolved configuration of stage {stage!r}\n" + yaml.safe_dump(merged, sort_keys=True))
    atomic_write_text(output_dir / "run_info.json", json.dumps(run_info(stage), indent=2) + "\n")
    return path


def start_stage_output(output_dir: str | os.PathLike, *configs, stage: str) -> Path:
    """The moment a stage starts replacing its previous output: call it only after the whole config and
    every input have been checked, so a refused re-run leaves a finished stage as it was.

    Removes what killed atomic writes left in output_dir, removes the completion marker (the stage writes
    it again with `fileio.mark_complete` as its very last act, on success only) and writes the resolved
    config of this run. Returns output_dir.
    """
    from .fileio import clear_complete, remove_leftovers

    output_dir = Path(output_dir)
    remove_leftovers(output_dir)
    clear_complete(output_dir)
    save_resolved_config(output_dir, *configs, stage=stage)
    return output_dir


def run_info(stage: str) -> dict[str, Any]:
    """Versions and command line, for reproducing a run."""
    import platform
    from importlib import metadata

    versions = {}
    for pkg in ("llm_recipes", "torch", "transformers", "datasets", "tokenizers", "accelerate", "peft", "trl", "evaluate"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"stage": stage, "argv": mask_secrets(sys.argv), "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions}


SECRET_WORDS = ("key", "token", "password", "secret")


def mask_secrets(argv: Sequence[str]) -> list[str]:
    """The command line with the values of --api_key, --token, ... replaced, so no secret lands on disk."""
    masked, hide_next = [], False
    for arg in argv:
        if hide_next:
            masked.append("***")
            hide_next = False
            continue
        name = arg.lstrip("-").split("=", 1)[0].lower()
        secret = arg.startswith("--") and any(word in name for word in SECRET_WORDS)
        if secret and "=" in arg:
            masked.append(arg.split("=", 1)[0] + "=***")
        else:
            masked.append(arg)
            hide_next = secret
    return masked

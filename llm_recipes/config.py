"""Stage configuration: dataclasses parsed from a YAML recipe, overridden by `--key value` flags.

Every stage entry point does the same three things:

    cfg, = parse_config([PretrainConfig], argv, stage="pretrain")   # YAML + CLI, unknown keys rejected
    ...
    save_resolved_config(cfg.output_dir, cfg, stage="pretrain")     # what it ran with, next to its artifacts

Parsing goes through `transformers.HfArgumentParser` so TRL's and transformers' own config
dataclasses (`SFTConfig`, `DPOConfig`, ...) work unchanged next to ours, with their help strings; stages whose
classes have only plain field types (gather, clean) get the same options from `PlainDataclassParser`, which
does not import transformers.
Unlike TRL's default we never ignore a key we don't know: a misspelled `lerning_rate` in a recipe
would otherwise silently train with the default.

Strings in a recipe may contain `${run_dir}`: it expands to `$LLM_RECIPES_RUN_DIR` when set (the `run`
stage sets it) and otherwise to `runs/<recipe folder name>`, so `recipes/quickstart/pretrain.yaml`
reads the tokenizer from `runs/quickstart/tokenizer` whether it runs alone or as part of `run`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import enum
import json
import os
import sys
import time
import types
import typing
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


def default_model_name(model_path: str | os.PathLike) -> str:
    """`runs/quickstart/sft/final` -> `sft`: the stage that made it says more than `final`."""
    path = Path(model_path).resolve()
    return path.parent.name if path.name in ("final", "model") and path.parent.name else path.name


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
        raise ConfigError(
            f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
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


class _Mismatch(Exception):
    """A value that does not fit a field type (carries what was expected)."""


_UNIONS = (typing.Union, types.UnionType)  # Optional[int] and int | None


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in _UNIONS:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping"}
    return names.get(typing.get_origin(tp) or tp, getattr(tp, "__name__", str(tp)))


def _fit(value: Any, tp: Any) -> Any:
    """`value` as a value of field type `tp` (int, float, bool, str, list[...], dict, Optional/Union, Enum,
    Literal); raises _Mismatch. Types it does not know are accepted as they are."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or isinstance(tp, (str, typing.TypeVar)):
        return value
    if origin in _UNIONS:
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch(_type_name(tp))
        # a member the value already is comes first: `Union[dict, str]` keeps a mapping, `Union[float, str]` a string
        members = [a for a in args if a is not type(None)]
        members.sort(key=lambda a: not (isinstance(typing.get_origin(a) or a, type)
                                        and isinstance(value, typing.get_origin(a) or a)))
        for member in members:
            try:
                return _fit(value, member)
            except _Mismatch:
                continue
        raise _Mismatch(_type_name(tp))
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch("one of " + ", ".join(map(repr, args)))
    if value is None:
        raise _Mismatch(_type_name(tp))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise _Mismatch("an integer") from None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("an integer")
    if tp is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)  # YAML reads 3e-4 (no dot) as a string
            except (ValueError, OverflowError):
                pass
        raise _Mismatch("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool):  # `resume_from_checkpoint: false` reads as the string the CLI would give
            return str(value).lower()
        if isinstance(value, (int, float)):
            return str(value)
        raise _Mismatch("a string")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise _Mismatch(_type_name(tp)) from None
    if (origin or tp) in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]  # a single value is a list of one
        item_type = args[0] if args else Any
        return [_fit(item, item_type) for item in items]
    if (origin or tp) is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("a mapping")
    return value


def _field_types(config_classes: Sequence[type]) -> dict[str, Any]:
    types_by_name: dict[str, Any] = {}
    for cls in config_classes:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # a type the running Python cannot resolve: not checked
            hints = {}
        for f in dataclasses.fields(cls):
            if f.init and f.name not in types_by_name:
                types_by_name[f.name] = hints.get(f.name, Any)
    return types_by_name


def check_types(values: dict[str, Any], config_classes: Sequence[type], where: str) -> dict[str, Any]:
    """The recipe values converted to their fields' types (a YAML `3e-4` string to a float, a single
    value to a list of one); a value that does not fit is a ConfigError naming the key, what it expected
    and what it got. argparse converts command-line strings itself, but not values that come as defaults."""
    types_by_name = _field_types(config_classes)
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = _fit(value, types_by_name.get(key, Any))
        except (_Mismatch, RecursionError) as e:
            got = type(value).__name__ if value is not None else "null"
            raise ConfigError(f"{where}: {key!r} must be {e}, got {got} {value!r:.80}") from None
    return checked


# the spellings of `resume_from_checkpoint` every training stage accepts besides a checkpoint path
RESUME_OFF = ("false", "none", "no")
RESUME_LATEST = ("latest", "true", "last", "auto")


def check_range(config, key: str, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raises a ConfigError naming `key` unless getattr(config, key) is None or within [low, high] (an open
    end excludes the bound). NaN is never within a range."""
    value = getattr(config, key)
    if value is None:
        return
    ok = (low is None or (value > low if low_open else value >= low)) and \
        (high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is None:
            wanted = f"{'>' if low_open else '>='} {low}"
        elif low is None:
            wanted = f"{'<' if high_open else '<='} {high}"
        else:
            wanted = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be {wanted}, got {value!r}")


def string_to_bool(value) -> bool:
    """A bool flag's value as HfArgumentParser reads it (yes/no, true/false, t/f, y/n, 1/0)."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"Truthy value expected: got {value} but expected one of yes/no, true/false, "
                                     "t/f, y/n, 1/0 (case insensitive).")


class PlainDataclassParser(argparse.ArgumentParser):
    """argparse for config dataclasses whose fields are str, int, float, bool, Optional[...] of those, a Union
    with str (read as str) or list[X]: the options `transformers.HfArgumentParser` makes for them (the same
    flags and `--no_x` complements, types, nargs, defaults; tests/test_config_plain_parser.py compares the two
    action by action for every stage's config class it takes), without importing transformers (~0.7 CPU s per
    process, a tenth of a small clean run). `parse_config` uses it for every stage whose classes it handles (our
    own configs) and HfArgumentParser for the others (pretraining's and TRL's, built on transformers'
    TrainingArguments)."""

    SCALARS = (str, int, float, bool)

    def __init__(self, dataclass_types: list[type], **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(**kwargs)
        self.dataclass_types = list(dataclass_types)
        for cls in self.dataclass_types:
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.init:
                    self._add_field(f, self._simple_type(hints[f.name]))

    @classmethod
    def _simple_type(cls, hint):
        """(scalar type, is_list) for a hint this parser handles, else None. Like HfArgumentParser, a Union
        with str is read as str and Optional[X] as X."""
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = typing.get_args(hint)
            if str in args:
                hint = str
            elif len(args) == 2 and type(None) in args and bool not in args:
                hint = args[0] if args[1] is type(None) else args[1]
            else:
                return None
        if typing.get_origin(hint) is list and len(typing.get_args(hint)) == 1:
            item = typing.get_args(hint)[0]
            return (item, True) if item in cls.SCALARS and item is not bool else None
        return (hint, False) if hint in cls.SCALARS else None

    @classmethod
    def handles(cls, config_class: type) -> bool:
        if not dataclasses.is_dataclass(config_class):
            return False
        try:
            hints = typing.get_type_hints(config_class)
        except Exception:  # an annotation that does not resolve here: HfArgumentParser reports it
            return False
        return all(cls._simple_type(hints[f.name]) is not None for f in dataclasses.fields(config_class) if f.init)

    def _add_field(self, f: dataclasses.Field, simple: tuple[type, bool]) -> None:
        kind, is_list = simple
        options = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        kwargs = dict(f.metadata)
        aliases = kwargs.pop("aliases", [])
        options += [aliases] if isinstance(aliases, str) else list(aliases)
        if kind is bool:
            kwargs.update(type=string_to_bool, nargs="?", const=True,
                          default=False if f.default is dataclasses.MISSING else f.default)
        else:
            kwargs["type"] = kind
            if is_list:
                kwargs["nargs"] = "+"
            if f.default is not dataclasses.MISSING:
                kwargs["default"] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                kwargs["default"] = f.default_factory()
            else:
                kwargs["required"] = True
        self.add_argument(*options, **kwargs)
        if kind is bool and f.default is True:  # after the flag itself: both write the same destination
            self.add_argument(f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}", action="store_false",
                              dest=f.name, default=False, **{k: v for k, v in f.metadata.items() if k != "aliases"})

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings: bool = False):
        namespace, remaining = self.parse_known_args(args=args)
        configs = []
        for cls in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(cls) if f.init}
            values = {k: v for k, v in vars(namespace).items() if k in names}
            configs.append(cls(**values))
        if not return_remaining_strings and remaining:  # as HfArgumentParser
            raise ValueError(f"Some specified arguments are not used by the argument parser: {remaining}")
        return (*configs, remaining) if return_remaining_strings else tuple(configs)


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
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path, rest = _split_config_flag(argv)
    if positional and rest and not rest[0].startswith("-"):
        rest = [f"--{positional}", rest[0], *rest[1:]]
    settings = dict(prog=f"llm-recipes {stage}", allow_abbrev=False,
                    description="Options come from --config recipe.yaml (a YAML mapping of the keys below); "
                                "--key value flags override the recipe.")
    if all(PlainDataclassParser.handles(cls) for cls in config_classes):
        parser = PlainDataclassParser(list(config_classes), **settings)
    else:
        from transformers import HfArgumentParser

        parser = HfArgumentParser(list(config_classes), **settings)
    values: dict[str, Any] = dict(defaults or {})
    if config_path is not None:
        recipe = load_yaml_config(config_path)
        check_keys(recipe, config_classes, f"config file {config_path!r}", stage)
        values.update(check_types(recipe, config_classes, f"config file {config_path!r}"))
    # YAML values become argparse defaults, so a CLI flag still wins; a required field given in YAML
    # is no longer required on the command line.
    for action in parser._actions:
        if action.dest in values:
            action.default = values[action.dest]
            action.required = False
            if isinstance(action.default, str) and callable(action.type):
                # argparse converts a string default with the flag's type itself and exits on failure:
                # convert here, so a bad recipe value is a ConfigError naming the key
                try:
                    action.default = action.type(action.default)
                except (TypeError, ValueError, argparse.ArgumentTypeError) as e:  # the last: HF's string_to_bool
                    raise ConfigError(f"{action.dest!r}: invalid value {values[action.dest]!r} ({e})") from None
    try:
        *configs, leftover = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    except ConfigError:
        raise
    except ValueError as e:  # a library config's own check (TRL, transformers) in __post_init__
        raise ConfigError(f"stage {stage!r}: {e}") from e
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
    return {f.name: _plain(getattr(config, f.name))
            for f in dataclasses.fields(config) if f.init and hasattr(config, f.name)}


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


def run_info(stage: str) -> dict[str, Any]:
    """Versions and command line, for reproducing a run."""
    import platform
    from importlib import metadata

    versions = {}
    for pkg in ("llm_recipes", "torch", "transformers", "datasets", "tokenizers", "accelerate", "peft", "trl",
                "evaluate"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"stage": stage, "argv": mask_secrets(sys.argv), "python": platform.python_version(),
            "platform": platform.platform(), "hardware": hardware(), "versions": versions,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}  # the marker's finished_at closes the span


def hardware() -> str:
    """What the stage ran on, for model cards: GPU names, or the CPU and its core count.

    A stage that never imported torch (gather, clean: their workers stay torch-free) ran on the CPU; asking
    torch about GPUs would cost it ~4 s and ~400 MB, inherited by every worker it forks."""
    import platform

    torch = sys.modules.get("torch")
    with contextlib.suppress(RuntimeError, AttributeError):
        if torch is not None and torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            return ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPU cores ({cpu})"


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

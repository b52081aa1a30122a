"""`PlainDataclassParser` gives the data stages' config classes the options transformers' HfArgumentParser would
(same flags, types, nargs, defaults, `--no_x` complements; the same values parsed), and `parse_config` then
never imports transformers for them; classes with other field types still go to HfArgumentParser."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import pytest
from transformers import HfArgumentParser

from llm_recipes.config import PlainDataclassParser, parse_config
from llm_recipes.data.cleaning import CleanConfig
from llm_recipes.gather import GatherConfig

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Mixed:
    name: str
    count: int = 3
    ratio: float = field(default=0.5, metadata={"help": "a ratio", "aliases": ["--r"]})
    on: bool = True
    off: bool = False
    maybe_size: Optional[int] = None
    either: Optional[Union[dict, str]] = None
    tags: Optional[list[str]] = None
    sizes: list[int] = field(default_factory=lambda: [1, 2])


def actions(parser) -> list[tuple]:
    rows = []
    for a in parser._actions:
        kind = getattr(a.type, "__name__", a.type)
        rows.append((tuple(a.option_strings), a.dest, kind, a.nargs, a.const, a.default, a.required, a.help,
                     type(a).__name__))
    return rows


def stage_configs() -> list[type]:
    """Every stage's config class that parse_config gives to PlainDataclassParser (not only the data stages':
    `handles` decides by field types)."""
    from llm_recipes.evaluate import EvaluateConfig
    from llm_recipes.evaluation.feedback_demo import FeedbackDemoConfig
    from llm_recipes.export import ExportConfig
    from llm_recipes.feedback import FeedbackConfig
    from llm_recipes.finetuning.training import FinetuneArguments
    from llm_recipes.push import PushConfig
    from llm_recipes.run import RunConfig
    from llm_recipes.serving.config import ServeConfig
    from llm_recipes.train_tokenizer import TrainTokenizerConfig

    return [CleanConfig, GatherConfig, EvaluateConfig, FeedbackDemoConfig, ExportConfig, FeedbackConfig,
            FinetuneArguments, PushConfig, RunConfig, ServeConfig, TrainTokenizerConfig]


@pytest.mark.parametrize("classes", [[c] for c in stage_configs()] + [[Mixed]], ids=lambda c: c[0].__name__)
def test_same_options_as_hf_argument_parser(classes):
    assert all(PlainDataclassParser.handles(c) for c in classes)
    assert actions(PlainDataclassParser(classes)) == actions(HfArgumentParser(classes))


@pytest.mark.parametrize("argv", [
    ["--name", "x"],
    ["--name", "x", "--count", "7", "--r", "0.25", "--no_on", "--off", "--tags", "a", "b", "--sizes", "4"],
    ["--name", "x", "--on", "false", "--off", "yes", "--maybe_size", "9", "--either", '{"a": 1}', "--rest", "1"],
    ["--name=y", "--no-on", "--maybe-size", "2"],
])
def test_same_values_as_hf_argument_parser(argv):
    ours = PlainDataclassParser([Mixed]).parse_args_into_dataclasses(argv, return_remaining_strings=True)
    theirs = HfArgumentParser([Mixed]).parse_args_into_dataclasses(argv, return_remaining_strings=True)
    assert ours == theirs


def test_a_bad_bool_is_an_error_naming_the_key(tmp_path):
    recipe = tmp_path / "clean.yaml"
    recipe.write_text("pii: maybe\n")
    with pytest.raises(Exception, match="pii"):
        parse_config([CleanConfig], ["--config", str(recipe)], stage="clean")


def test_other_field_types_go_to_hf_argument_parser():
    @dataclass
    class WithBoolOrNone:
        flag: Optional[bool] = None

    assert not PlainDataclassParser.handles(WithBoolOrNone)
    (cfg,) = parse_config([WithBoolOrNone], ["--flag", "true"], stage="t")
    assert cfg.flag is True
    assert dataclasses.is_dataclass(cfg)


def test_clean_and_gather_parse_without_importing_transformers(tmp_path):
    code = """
import json, sys
from llm_recipes.config import parse_config
from llm_recipes.gather import GatherConfig
from llm_recipes.data.cleaning import CleanConfig
(c,) = parse_config([CleanConfig], ["--input_dir", "a", "--no_pii", "--languages", "en", "fr"], stage="clean")
(g,) = parse_config([GatherConfig], ["--sources", '[{"type": "python-docs"}]'], stage="gather")
print(json.dumps({"pii": c.pii, "languages": c.languages, "sources": g.sources,
                  "transformers": "transformers" in sys.modules}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"pii": False, "languages": ["en", "fr"], "sources": [{"type": "python-docs"}],
                      "transformers": False}

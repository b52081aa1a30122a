"""Config fuzzing: any value for any key of any stage's config gives a valid config or a ConfigError that
names the key, never a traceback; values are type-checked against the dataclass fields and numeric
thresholds range-checked."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_recipes.config import ConfigError, check_types, parse_config
from llm_recipes.pipeline.stages import FINETUNING
from llm_recipes.pipeline.stages import STAGES as REGISTRY


def _stage_classes():
    """Every stage's config classes, as the stage registry and each entry module declare them."""
    return {s.name: list(s.config_classes()) for s in REGISTRY}


STAGES = _stage_classes()
FINETUNING_STAGES = [s.name for s in REGISTRY if s.kind == FINETUNING]
# keys every stage needs to parse at all, with a valid value (the fuzzed key replaces it)
REQUIRED = {"export": {"model_path": "m"}, "push": {"model_path": "m", "repo_id": "me/m"},
            "feedback": {"feedback_path": "f"}, "run": {"recipe_dir": "r"}, "serve": {"model_path": "m"},
            "pretrain": {"output_dir": "o"},
            # TRL's configs (every fine-tuning stage's) need an output_dir
            **{name: {"output_dir": "o"} for name in FINETUNING_STAGES}}
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["latest", "-5", "3e-4", "true", "[1, 2]", "{a: 1}", "none", "nan"]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2))


def _keys(stage):
    return sorted({f.name for cls in STAGES[stage] for f in dataclasses.fields(cls) if f.init})


def _parse(tmp_path, stage, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return parse_config(STAGES[stage], ["--config", str(path)], stage=stage)


@pytest.mark.parametrize("stage", sorted(STAGES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_value_is_a_valid_config_or_a_clear_error(tmp_path, stage, data):
    key = data.draw(st.sampled_from(_keys(stage)), label="key")
    value = data.draw(values, label="value")
    recipe = {**REQUIRED.get(stage, {}), key: value}
    try:
        _parse(tmp_path, stage, recipe)
    except ConfigError as e:
        assert str(e).strip()
    except SystemExit as e:  # argparse's own error for a required key; never for a recipe value
        pytest.fail(f"{stage}: {key}={value!r} ended in SystemExit({e.code})")


def test_values_are_type_checked_and_converted(tmp_path):
    from llm_recipes.clean import CleanConfig
    from llm_recipes.training import PretrainConfig

    with pytest.raises(ConfigError, match="'min_chars' must be an integer, got list"):
        _parse(tmp_path, "clean", {"min_chars": [1, 2]})
    with pytest.raises(ConfigError, match="'seq_len' must be an integer( or null)?, got bool"):
        _parse(tmp_path, "pretrain", {"output_dir": "o", "seq_len": True})
    with pytest.raises(ConfigError, match="'output_dir' must be a string, got dict"):
        _parse(tmp_path, "clean", {"output_dir": {"a": 1}})
    checked = check_types({"learning_rate": "3e-4", "report_to": "none", "max_chars": 12.0, "languages": "en"},
                          [PretrainConfig, CleanConfig], "recipe")
    assert checked == {"learning_rate": 3e-4, "report_to": ["none"], "max_chars": 12, "languages": ["en"]}


@pytest.mark.parametrize("stage,key,value,message", [
    ("clean", "max_chars", -5, "max_chars must be >= 0, got -5"),
    ("clean", "min_chars", -1, "min_chars must be >= 0"),
    ("clean", "min_chars", 500, "min_chars \\(500\\) is above max_chars \\(100\\)"),
    ("clean", "language_min_score", 1.5, "language_min_score must be in \\[0, 1\\]"),
    ("clean", "minhash_buckets", 0, "minhash_buckets must be >= 1"),
    ("clean", "num_workers", 0, "num_workers must be >= 1"),
    ("gather", "max_doc_chars", -5, "max_doc_chars must be >= 1"),
    ("gather", "min_doc_chars", -1, "min_doc_chars must be >= 0"),
    ("gather", "shard_mb", 0, "shard_mb must be > 0"),
    ("gather", "total_mb", -1.0, "total_mb must be > 0"),
    ("gather", "num_proc", 0, "num_proc must be >= 1"),
    ("pretrain", "shuffle_buffer", -1, "shuffle_buffer must be >= 0"),
    ("pretrain", "outlier_window", 0, "outlier_window must be >= 1"),
    ("pretrain", "max_grad_norm", math.nan, "max_grad_norm must be >= 0"),
    ("pretrain", "sample_max_new_tokens", -3, "sample_max_new_tokens must be >= 0"),
    ("pretrain", "weight_decay", -0.1, "weight_decay must be >= 0"),
    ("pretrain", "eval_max_batches", -2, "eval_max_batches must be -1 .* or >= 1"),
])
def test_negative_and_out_of_range_thresholds_name_the_key(tmp_path, stage, key, value, message):
    recipe = {**REQUIRED.get(stage, {}), key: value}
    if key == "min_chars" and value == 500:
        recipe["max_chars"] = 100
    with pytest.raises(ConfigError, match=message):
        _parse(tmp_path, stage, recipe)


def test_source_values_are_checked(tmp_path):
    from llm_recipes.data.sources import SourceSpec

    with pytest.raises(ValueError, match="sources\\[0\\] \\(files\\): 'fraction' must be a number, got str"):
        SourceSpec.from_dict(0, {"type": "files", "paths": ["a"], "fraction": "half"})
    with pytest.raises(ValueError, match="sources\\[1\\] \\(web\\): max_page_bytes must be > 0, got -1"):
        SourceSpec.from_dict(1, {"type": "web", "urls": ["http://x"], "max_page_bytes": -1})
    assert SourceSpec.from_dict(0, {"type": "files", "paths": "notes/*.md"}).paths == ["notes/*.md"]


def test_yaml_booleans_for_resume_mean_off_and_latest(tmp_path):
    (off,) = _parse(tmp_path, "pretrain", {"output_dir": "o", "resume_from_checkpoint": False})
    (on,) = _parse(tmp_path, "pretrain", {"output_dir": "o", "resume_from_checkpoint": True})
    assert off.resume_from_checkpoint is None and on.resume_from_checkpoint == "latest"

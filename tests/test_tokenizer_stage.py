"""`llm-recipes train-tokenizer`: the stage end to end on a tiny clean-stage folder, its report, recipes and
bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, SHARED_DATA, tiny_corpus

from llm_recipes.train_tokenizer import TrainTokenizerConfig, main


def write_clean_folder(folder: Path, texts: list[str], validation: list[str] | None = None,
                       column: str = "text") -> Path:
    """A folder shaped like the clean stage's output."""
    for split, rows in (("train", texts), ("validation", validation if validation is not None else texts[:5])):
        (folder / split).mkdir(parents=True, exist_ok=True)
        half = len(rows) // 2
        for k, part in enumerate((rows[:half], rows[half:])):
            pq.write_table(pa.table({column: part, "id": [f"{split}-{k}-{i}" for i in range(len(part))]}),
                           folder / split / f"part-{k:05d}.parquet")
    return folder


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    corpus = tiny_corpus()
    return write_clean_folder(tmp_path_factory.mktemp("clean"), corpus[10:], corpus[:10])


@pytest.fixture(scope="module")
def stage_output(clean_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "tokenizer"
    code = main(["--dataset_path", str(clean_dir), "--output_dir", str(out), "--vocab_size", "600",
                 "--model_max_length", "128", "--show_progress", "false"])
    assert code == 0
    return out


def test_stage_writes_a_loadable_tokenizer_and_report(stage_output):
    from transformers import AutoTokenizer

    names = {p.name for p in stage_output.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer_report.md",
            "tokenizer_report.json", "resolved_config.yaml", "run_info.json", "stage_complete.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporary leftovers
    tok = AutoTokenizer.from_pretrained(stage_output)
    assert len(tok) == 640  # 600 rounded up to a multiple of 64
    assert tok.model_max_length == 128
    tokenizer_config = json.loads((stage_output / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    report = json.loads((stage_output / "tokenizer_report.json").read_text())
    val = report["validation"]
    assert val["documents"] == 10 and val["round_trip_exact"] == "10/10"
    assert val["bytes_per_token"] == pytest.approx(val["bytes"] / val["tokens"], rel=1e-3)
    train = report["training"]
    assert train["documents"] == len(tiny_corpus()) - 10 and train["seconds"] > 0 and train["peak_rss_mb"] > 0
    assert 0 < report["vocabulary"]["used_fraction"] <= 1
    assert report["vocabulary"]["used_on_validation"] + report["vocabulary"]["never_used"] == 640 - 5
    assert report["examples"]["chat_assistant_tokens"] == "4.<|im_end|>You're welcome.<|im_end|>"
    md = (stage_output / "tokenizer_report.md").read_text()
    assert "bytes/token" in md and "## Vocabulary" in md


def test_report_compares_with_gpt2_where_available(stage_output):
    report = json.loads((stage_output / "tokenizer_report.json").read_text())
    ref = report["reference"]
    if not (SHARED_DATA / "rasbt" / "gpt2_tokenizer").exists():
        assert ref["available"] is False and "not found" in ref["reason"]
        pytest.skip("GPT-2 tokenizer files not available: the report skips the comparison (checked above)")
    assert ref["available"] and ref["vocab_size"] == 50257
    assert ref["bytes_per_token"] == pytest.approx(report["validation"]["bytes"] / ref["tokens"], rel=1e-3)


def test_gpt2_reference_tokenizer_is_the_real_one():
    from llm_recipes.tokenizer.report import load_reference_tokenizer

    folder = SHARED_DATA / "rasbt" / "gpt2_tokenizer"
    if not folder.exists():
        pytest.skip("shared data rasbt/gpt2_tokenizer not available")
    gpt2 = load_reference_tokenizer(folder)
    assert gpt2.encode("Hello world").ids == [15496, 995]  # GPT-2's well-known ids


def test_report_without_comparison_or_validation(clean_dir, tmp_path, capsys):
    out = tmp_path / "tok"
    train_only = write_clean_folder(tmp_path / "clean", tiny_corpus()[:30], validation=[])
    for split in ("validation",):
        for p in (train_only / split).glob("*.parquet"):
            p.unlink()
    assert main(["--dataset_path", str(train_only), "--output_dir", str(out), "--vocab_size", "320",
                 "--compare_tokenizer", "", "--show_progress", "false"]) == 0
    report = json.loads((out / "tokenizer_report.json").read_text())
    assert report["validation"]["documents"] == 0 and report["reference"]["available"] is False
    assert "wrote tokenizer.json" in capsys.readouterr().out


def test_missing_text_column_is_a_clear_error(tmp_path, capsys):
    folder = write_clean_folder(tmp_path / "clean", tiny_corpus()[:10], column="content")
    assert main(["--dataset_path", str(folder), "--output_dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "text column 'text' not found" in err and "content" in err
    assert not (tmp_path / "out" / "stage_complete.json").exists()


def test_empty_dataset_is_a_clear_error(tmp_path, capsys):
    folder = write_clean_folder(tmp_path / "clean", [], validation=[])
    assert main(["--dataset_path", str(folder), "--output_dir", str(tmp_path / "out")]) == 1
    assert "the dataset is empty" in capsys.readouterr().err
    only_blank = write_clean_folder(tmp_path / "blank", ["", ""], validation=[])
    assert main(["--dataset_path", str(only_blank), "--output_dir", str(tmp_path / "out2")]) == 1
    assert "empty dataset" in capsys.readouterr().err


def test_small_vocab_and_missing_folder_are_clear_errors(clean_dir, tmp_path, capsys):
    assert main(["--dataset_path", str(clean_dir), "--output_dir", str(tmp_path / "o"), "--vocab_size", "100"]) == 1
    assert "vocab_size 128 is too small" in capsys.readouterr().err
    assert main(["--dataset_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")]) == 1
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty_folder").mkdir()
    assert main(["--dataset_path", str(tmp_path / "empty_folder"), "--output_dir", str(tmp_path / "o")]) == 1
    assert "no train/*.parquet" in capsys.readouterr().err


def test_unknown_key_is_rejected_by_the_cli(tmp_path, capsys):
    from llm_recipes.cli import main as cli

    assert cli(["train-tokenizer", "--vocab_sise", "512"]) == 2
    assert "vocab_size" in capsys.readouterr().err


def test_max_train_chars_caps_the_sample(clean_dir, tmp_path):
    out = tmp_path / "tok"
    assert main(["--dataset_path", str(clean_dir), "--output_dir", str(out), "--vocab_size", "320",
                 "--max_train_chars", "20000", "--show_progress", "false", "--compare_tokenizer", ""]) == 0
    train = json.loads((out / "tokenizer_report.json").read_text())["training"]
    # a random sample of about the cap (it stops at the cap, and can fall short of it by chance)
    assert 8_000 <= train["characters"] < 20_000 + 60_000 and train["documents"] < len(tiny_corpus()) - 10



@pytest.mark.parametrize("recipe", sorted((REPO_ROOT / "recipes").glob("*/train_tokenizer.yaml")),
                         ids=lambda p: p.parent.name)
def test_recipes_parse(recipe, monkeypatch):
    from llm_recipes.config import parse_config

    monkeypatch.setenv("LLM_RECIPES_RUN_DIR", "runs/x")
    (cfg,) = parse_config([TrainTokenizerConfig], ["--config", str(recipe)], stage="train-tokenizer")
    assert cfg.output_dir == "runs/x/tokenizer" and cfg.dataset_path == "runs/x/clean"
    assert cfg.vocab_size >= 512


def test_recipes_exist_for_both_pipelines():
    assert (REPO_ROOT / "recipes" / "quickstart" / "train_tokenizer.yaml").is_file()
    assert (REPO_ROOT / "recipes" / "debug" / "train_tokenizer.yaml").is_file()


def test_text_stream_samples_across_files_deterministically(tmp_path):
    from llm_recipes.tokenizer.bpe import text_stream

    for k in range(3):
        pq.write_table(pa.table({"text": [f"file{k} doc{i} " + "x" * 100 for i in range(200)]}),
                       tmp_path / f"p{k}.parquet")
    files = sorted(str(p) for p in tmp_path.glob("*.parquet"))
    texts, rows = text_stream(files, max_chars=20_000, seed=1)
    sample = list(texts)
    assert rows == 600 and 20_000 <= sum(map(len, sample)) < 20_000 + 200
    assert {t.split()[0] for t in sample} == {"file0", "file1", "file2"}  # not just the first file
    assert sample == list(text_stream(files, max_chars=20_000, seed=1)[0])
    assert sample != list(text_stream(files, max_chars=20_000, seed=2)[0])
    assert len(list(text_stream(files)[0])) == 600


def test_definition_folder_is_found_in_a_non_editable_install(tmp_path, monkeypatch):
    """An installed wheel has no repository beside the package: `tokenizer` resolves to the copy that
    setup.cfg's data_files put under <prefix>/share/llm_recipes/, and the wheel really carries that copy."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from llm_recipes.tokenizer import bpe as tokenization

    share = tmp_path / "prefix" / "share" / "llm_recipes"
    shutil.copytree(REPO_ROOT / "tokenizer", share / "tokenizer")
    monkeypatch.setattr(tokenization, "REPO_ROOT", tmp_path / "site-packages")  # no tokenizer/ there
    monkeypatch.setattr(tokenization, "INSTALLED_DATA_DIRS", [share])
    monkeypatch.chdir(tmp_path)
    assert tokenization.resolve_definition_dir(None) == share / "tokenizer"
    assert tokenization.resolve_definition_dir("tokenizer") == share / "tokenizer"
    specials, template = tokenization.load_definition("tokenizer")
    assert specials["eos_token"] and template == (REPO_ROOT / "tokenizer" / "chat_template.jinja").read_text(
        encoding="utf-8")
    with pytest.raises(FileNotFoundError,
                       match=r"'my_tokenizer' must contain special_tokens.yaml .*looked in: my_tokenizer"):
        tokenization.resolve_definition_dir("my_tokenizer")

    # build from a copy of the sources: setuptools writes build/ and egg-info into the tree it builds
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for name in ("llm_recipes", "tokenizer"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = wheels.glob("llm_recipes-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("special_tokens.yaml", "chat_template.jinja"):
        assert any(n.endswith(f".data/data/share/llm_recipes/tokenizer/{name}") for n in names), name

"""A finished stage is never destroyed by a failed re-run: every input is checked before the previous output
is touched, the completion marker goes only when new work really starts and comes back only on success."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm_recipes.config import ConfigError
from llm_recipes.data.documents import write_parquet_atomic


def _finished(folder: Path, *artifacts: str) -> Path:
    """A stage folder as a successful run leaves it: artifacts, resolved_config.yaml, stage_complete.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in artifacts:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("finished work")
    (folder / "resolved_config.yaml").write_text("# the finished run\n")
    (folder / "stage_complete.json").write_text("{}")
    return folder


def _untouched(folder: Path, *artifacts: str) -> bool:
    return ((folder / "stage_complete.json").is_file()
            and (folder / "resolved_config.yaml").read_text() == "# the finished run\n"
            and all((folder / name).read_text() == "finished work" for name in artifacts))


def _gather_output(folder: Path) -> Path:
    rows = [{"text": f"Document number {i} with a few words of text.", "id": str(i), "source": "web"}
            for i in range(5)]
    write_parquet_atomic(folder / "data" / "000-web-00000.parquet", rows)
    return folder


def test_clean_checks_decontamination_files_before_removing_the_previous_splits(tmp_path):
    from llm_recipes import clean

    gathered = _gather_output(tmp_path / "gather")
    out = _finished(tmp_path / "clean", "train/part-0.parquet", "validation/part-0.parquet")
    (out / "work").mkdir()  # an earlier run's work folder (its fingerprint differs from this run's)
    with pytest.raises(ConfigError, match="decontamination_files .*nowhere.*match no file"):
        clean.main(["--input_dir", str(gathered), "--output_dir", str(out),
                    "--decontamination_files", str(tmp_path / "nowhere" / "*.jsonl")])
    assert _untouched(out, "train/part-0.parquet", "validation/part-0.parquet")
    broken = tmp_path / "eval.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=f"decontamination file '{broken}' cannot be read"):
        clean.main(["--input_dir", str(gathered), "--output_dir", str(out), "--decontamination_files", str(broken)])
    assert _untouched(out, "train/part-0.parquet", "validation/part-0.parquet")


@pytest.mark.parametrize("recipe,message", [
    ({"min_chars": [1, 2]}, "'min_chars' must be an integer, got list"),
    ({"max_chars": -5}, "max_chars must be >= 0, got -5"),
])
def test_clean_bad_thresholds_are_refused_before_anything_runs(tmp_path, recipe, message):
    from llm_recipes import clean

    gathered = _gather_output(tmp_path / "gather")
    out = _finished(tmp_path / "clean", "train/part-0.parquet")
    config = tmp_path / "clean.yaml"
    config.write_text(yaml.safe_dump({"input_dir": str(gathered), "output_dir": str(out), **recipe}))
    with pytest.raises(ConfigError, match=message):
        clean.main(["--config", str(config)])
    assert _untouched(out, "train/part-0.parquet")


def test_gather_refused_run_keeps_the_finished_gather(tmp_path):
    from llm_recipes import gather

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("A note with enough words to be a document of its own.")
    out = tmp_path / "gather"
    sources = json.dumps([{"type": "files", "paths": [str(notes / "*.txt")]}])
    assert gather.main(["--output_dir", str(out), "--sources", sources]) == 0
    finished = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = json.dumps([{"type": "files", "paths": [str(notes / "*.md")]}])
    with pytest.raises(ConfigError, match="different sources"):
        gather.main(["--output_dir", str(out), "--sources", other])
    with pytest.raises(ConfigError, match="max_doc_chars must be >= 1"):
        gather.main(["--output_dir", str(out), "--sources", sources, "--max_doc_chars", "-5"])
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == finished


def test_gather_overwrite_that_fails_halfway_keeps_the_previous_data(tmp_path, monkeypatch):
    import llm_recipes.data.gathering as gathering
    from llm_recipes import gather

    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(3):
        (notes / f"{i}.txt").write_text(f"Note {i}: a note with enough words to be a document of its own.")
        (notes / f"{i}.md").write_text(f"Markdown {i}: another note with enough words to be a document.")
    out = tmp_path / "gather"
    sources = json.dumps([{"type": "files", "paths": [str(notes / "*.txt")]}])
    assert gather.main(["--output_dir", str(out), "--sources", sources]) == 0
    finished = {p.relative_to(out): p.read_bytes() for p in (out / "data").rglob("*") if p.is_file()}
    other = json.dumps([{"type": "files", "paths": [str(notes / "*.md")]}])

    real = gathering.iter_source

    def dies_after_one(spec, *args, **kwargs):  # the new sources fail halfway (a network error, a kill)
        for n, item in enumerate(real(spec, *args, **kwargs)):
            if n == 1:
                raise OSError("connection reset")
            yield item

    monkeypatch.setattr(gathering, "iter_source", dies_after_one)
    with pytest.raises(OSError, match="connection reset"):
        gather.main(["--output_dir", str(out), "--sources", other, "--overwrite_output_dir", "true"])
    assert {p.relative_to(out): p.read_bytes() for p in (out / "data").rglob("*") if p.is_file()} == finished
    monkeypatch.setattr(gathering, "iter_source", real)
    # the same overwrite, now succeeding, replaces the data in one swap and leaves no staging folder behind
    assert gather.main(["--output_dir", str(out), "--sources", other, "--overwrite_output_dir", "true"]) == 0
    texts = [p.name for p in (out / "data").glob("*.parquet")]
    assert texts and all("files" in name for name in texts)
    import pyarrow.parquet as pq

    rows = [r for f in (out / "data").glob("*.parquet") for r in pq.read_table(f).to_pylist()]
    assert sorted(r["text"][:10] for r in rows) == ["Markdown 0", "Markdown 1", "Markdown 2"]
    assert not (out / ".data.overwrite.tmp").exists() and (out / "stage_complete.json").is_file()


def test_train_tokenizer_refused_run_keeps_the_finished_tokenizer(tmp_path, capsys):
    from llm_recipes import train_tokenizer

    out = _finished(tmp_path / "tokenizer", "tokenizer.json")
    assert train_tokenizer.main(["--output_dir", str(out), "--dataset_path", str(tmp_path / "missing")]) == 1
    assert "dataset_path" in capsys.readouterr().err
    assert _untouched(out, "tokenizer.json")
    empty = tmp_path / "clean"
    empty.mkdir()
    write_parquet_atomic(empty / "train" / "part-0.parquet", [{"text": "some text"}])
    assert train_tokenizer.main(["--output_dir", str(out), "--dataset_path", str(empty),
                                 "--tokenizer_definition_dir", str(tmp_path / "no_definition")]) == 1
    assert "special_tokens.yaml" in capsys.readouterr().err
    assert _untouched(out, "tokenizer.json")
    for flag, value, message in (("--vocab_size", "10", "vocab_size 64 is too small"),
                                 ("--max_train_chars", "-1", "max_train_chars must be >= 0, got -1")):
        assert train_tokenizer.main(["--output_dir", str(out), "--dataset_path", str(empty), flag, value]) == 1
        assert message in capsys.readouterr().err
        assert _untouched(out, "tokenizer.json")


def test_evaluate_refused_run_keeps_its_marker_and_a_failed_run_clears_it(tmp_path, tiny_model_dir, monkeypatch):
    from llm_recipes import evaluate
    from llm_recipes.evaluation import suite

    out = _finished(tmp_path / "eval", "eval_results.json")
    assert evaluate.main(["--output_dir", str(out), "--models", f"m={tmp_path / 'no_model'}"]) == 2
    assert _untouched(out, "eval_results.json")

    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text(json.dumps({"text": "Some held-out text to score."}) + "\n")

    class Boom(RuntimeError):
        pass

    def fail(*args, **kwargs):
        raise Boom("killed mid-evaluation")

    monkeypatch.setattr(suite, "LMScorer", fail, raising=False)
    monkeypatch.setattr("llm_recipes.evaluation.scoring.LMScorer", fail)
    with pytest.raises(Boom):
        evaluate.main(["--output_dir", str(out), "--models", f"m={tiny_model_dir}", "--heldout_data", str(heldout),
                       "--update_model_card", "false"])
    # new work had started: the old results are no longer what the folder holds, so `run` must redo it
    assert not (out / "stage_complete.json").exists()


def test_sft_with_an_empty_dataset_file_names_the_file(tmp_path, tiny_model_dir, capsys):
    from finetuning_helpers import stage_argv

    from llm_recipes import sft

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = _finished(tmp_path / "sft", "final/model.safetensors")
    assert sft.main(stage_argv(tiny_model_dir, out, dataset_name=empty)) == 2
    assert f"dataset file '{empty}' is empty" in capsys.readouterr().err
    assert _untouched(out, "final/model.safetensors")


def _trainer_checkpoint(folder: Path, step: int, state_step: int | None = None, weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step if state_step is None else state_step}))
    if weights:
        (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_finetuning_resume_skips_broken_checkpoints_and_refuses_when_all_are(tmp_path):
    from llm_recipes.finetuning.training import resolve_resume, set_aside_broken_checkpoints

    good = _trainer_checkpoint(tmp_path / "checkpoint-4", 4)
    _trainer_checkpoint(tmp_path / "checkpoint-6", 6, weights=False)  # killed before the weights were written
    _trainer_checkpoint(tmp_path / "checkpoint-8", 8, state_step=3)  # step disagrees with the name
    assert resolve_resume("latest", tmp_path) == str(good)
    # the Trainer's rotation goes by step number: the broken newer ones are moved aside so it keeps good ones
    moved = set_aside_broken_checkpoints(tmp_path, after=str(good))
    assert sorted(p.name for p in moved) == ["checkpoint-6.broken", "checkpoint-8.broken"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6.broken", "checkpoint-8.broken"]
    (good / "trainer_state.json").unlink()
    with pytest.raises(ConfigError, match=f"none of the 1 checkpoint.*{tmp_path}.*checkpoint-4 has no readable"):
        resolve_resume("latest", tmp_path)
    with pytest.raises(ConfigError, match="is partial"):
        resolve_resume(str(good), tmp_path)
    assert resolve_resume("latest", tmp_path / "fresh") is None


def test_feedback_rerun_that_writes_new_files_but_fails_is_not_marked_finished(tmp_path, capsys):
    from llm_recipes import feedback
    from llm_recipes.serving.feedback_store import FeedbackStore

    out = _finished(tmp_path / "feedback", "dpo.jsonl", "kto.jsonl")
    assert feedback.main([str(tmp_path / "nowhere.sqlite"), "--output_dir", str(out)]) == 2  # refused: untouched
    assert _untouched(out, "dpo.jsonl", "kto.jsonl")
    FeedbackStore(tmp_path / "empty.sqlite").close()
    assert feedback.main([str(tmp_path / "empty.sqlite"), "--output_dir", str(out)]) == 1
    assert "holds no usable feedback" in capsys.readouterr().err
    # the old exports were replaced by empty ones: `run` must not skip this stage as finished
    assert (out / "dpo.jsonl").read_text() == "" and not (out / "stage_complete.json").exists()

"""`llm-recipes feedback`: stored feedback -> DPO and KTO datasets the fine-tuning stages accept."""

from __future__ import annotations

import json

import pytest


def _fill(store):
    q1 = [{"role": "user", "content": "How do I join paths?"}]
    q2 = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a tuple?"}]
    store.add(model="m", messages=q1, completion="Use os.path.join.", rating=1, suggestion=None)
    store.add(model="m", messages=q1, completion="Paths cannot be joined.", rating=-1, suggestion=None)
    store.add(model="m", messages=q1, completion="Use +.", rating=1, suggestion=None)
    store.add(model="m", messages=q1, completion="Use +.", rating=-1, suggestion=None)  # changed their mind
    store.add(model="m", messages=q2, completion="A list.", rating=-1, suggestion="An immutable sequence.")
    store.add(model="m", messages=q2, completion="A list.", rating=None, suggestion="An immutable sequence.")  # twice
    return q1, q2


def test_feedback_export_builds_dpo_and_kto(tmp_path):
    from llm_recipes.cli import main
    from llm_recipes.finetuning.data import convert_for_stage, load_raw_dataset
    from llm_recipes.serving.feedback_store import FeedbackStore

    store = FeedbackStore(tmp_path / "serve" / "feedback.sqlite")
    q1, q2 = _fill(store)
    store.close()
    out = tmp_path / "feedback"
    assert main(["feedback", str(tmp_path / "serve"), "--output_dir", str(out)]) == 0

    dpo = [json.loads(line) for line in (out / "dpo.jsonl").read_text().splitlines()]
    kto = [json.loads(line) for line in (out / "kto.jsonl").read_text().splitlines()]
    as_text = lambda turns: turns[0]["content"]  # noqa: E731
    assert [(r["prompt"], as_text(r["chosen"]), as_text(r["rejected"])) for r in dpo] == [
        (q2, "An immutable sequence.", "A list."),
        (q1, "Use os.path.join.", "Paths cannot be joined."),
        (q1, "Use os.path.join.", "Use +."),
    ]
    assert sorted((as_text(r["completion"]), r["label"]) for r in kto) == sorted([
        ("Use os.path.join.", True), ("Paths cannot be joined.", False), ("Use +.", False), ("A list.", False),
        ("An immutable sequence.", True)])
    assert all(r["chosen"][0]["role"] == "assistant" for r in dpo)
    summary = json.loads((out / "feedback_summary.json").read_text())
    assert summary["rows"] == 6 and summary["dpo_pairs"] == 3 and summary["kto_rows"] == 5
    assert (out / "stage_complete.json").is_file()

    # the fine-tuning stages' own loader accepts both files as they are
    for stage, name in (("dpo", "dpo.jsonl"), ("kto", "kto.jsonl")):
        raw = load_raw_dataset(str(out / name))
        dataset, fmt = convert_for_stage(raw["train"], stage, name)
        assert len(dataset) == (3 if stage == "dpo" else 5)
        assert fmt == ("preference" if stage == "dpo" else "unpaired")


def test_feedback_export_bad_input(tmp_path, capsys):
    from llm_recipes.cli import main
    from llm_recipes.serving.feedback_store import FeedbackStore

    assert main(["feedback", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    assert main(["feedback", str(junk), "--output_dir", str(tmp_path / "o")]) == 2
    assert "not a feedback database" in capsys.readouterr().err
    store = FeedbackStore(tmp_path / "few.sqlite")
    store.add(model="m", messages=[{"role": "user", "content": "q"}], completion="a", rating=1, suggestion=None)
    store.close()
    argv = ["feedback", str(tmp_path / "few.sqlite"), "--output_dir", str(tmp_path / "f"), "--min_rows", "5"]
    assert main(argv) == 1
    assert not (tmp_path / "f" / "stage_complete.json").exists()
    # only thumbs up: no correction to learn from, said plainly (KTO still has its rows)
    capsys.readouterr()
    assert main(["feedback", str(tmp_path / "few.sqlite"), "--output_dir", str(tmp_path / "g")]) == 0
    assert "no DPO pairs: none of the 1 feedback rows has a suggested better answer" in capsys.readouterr().err
    # training DPO on that export is not an empty training run: the stage stops on the data and says why
    from finetuning_helpers import stage_argv

    from llm_recipes import dpo
    argv = stage_argv(tmp_path / "no-model-needed", tmp_path / "dpo", dataset_name=tmp_path / "g" / "dpo.jsonl")
    assert dpo.main(argv) == 2
    err = capsys.readouterr().err
    assert "dpo.jsonl' is empty" in err and "feedback export" in err and "holds no corrections" in err
    assert "(1 feedback rows)" in err and not (tmp_path / "dpo" / "stage_complete.json").exists()
    # an empty store: nothing at all to train on is an error, and the stage is not marked finished
    FeedbackStore(tmp_path / "empty.sqlite").close()
    assert main(["feedback", str(tmp_path / "empty.sqlite"), "--output_dir", str(tmp_path / "h")]) == 1
    assert "holds no usable feedback" in capsys.readouterr().err
    assert not (tmp_path / "h" / "stage_complete.json").exists()
    with pytest.raises(ValueError, match="rating or a suggestion"):
        FeedbackStore(tmp_path / "x.sqlite").add(model="m", messages=[], completion="a", rating=None, suggestion=None)

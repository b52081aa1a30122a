"""The feedback demonstration at toy size: the real server in its own process, a scripted user's corrections
through /v1/chat/completions and /v1/feedback, the feedback and dpo stages, and the evaluate stage on held-out
paraphrases and held-out text, before against after."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, tiny_corpus
from finetuning_helpers import write_clean_folder

from llm_recipes.evaluation.everyday import GROUPS
from llm_recipes.evaluation.feedback_demo import corrected_scenes, main, scene_pairs

RECIPE = REPO_ROOT / "recipes" / "feedback-demo"


def _toy_recipe(tmp_path: Path, heldout: Path, **dpo_overrides) -> Path:
    """The demo's own serve, feedback, dpo and evaluate YAMLs, smaller; the model to correct is put in place by the
    test instead of the gather..pretrain stages."""
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    for name in ("serve", "feedback", "dpo"):
        shutil.copy(RECIPE / f"{name}.yaml", recipe / f"{name}.yaml")
    evaluate = yaml.safe_load((RECIPE / "evaluate.yaml").read_text())
    evaluate.update(heldout_data=str(heldout), max_heldout_bytes=20000, choice_tasks=[])
    (recipe / "evaluate.yaml").write_text(yaml.safe_dump(evaluate))
    if dpo_overrides:
        dpo = yaml.safe_load((RECIPE / "dpo.yaml").read_text())
        dpo.update(dpo_overrides)
        (recipe / "dpo.yaml").write_text(yaml.safe_dump(dpo))
    return recipe


def test_scene_pairs_are_the_other_wordings_against_the_group():
    scenes = corrected_scenes(None)
    assert len(scenes) == 52 and len({s.answer for s in scenes}) == 52
    assert {s.answer for s in corrected_scenes(13)} == {group[0].answer for group in GROUPS}  # one per group
    pairs = scene_pairs(scenes)
    assert len(pairs) == 52 * 3 * 3
    asked = {s.wordings[0] for s in scenes}
    assert not asked & {p["prompt"][0]["content"] for p in pairs}, "no held-out prompt was sent to the server"
    assert {p["prompt"][0]["content"] for p in scene_pairs(scenes, heldout=False)} == asked
    # every word is chosen as often as it is rejected: learning a word, not a scene, cannot move the accuracy
    chosen = sorted(p["chosen"][0]["content"] for p in pairs)
    rejected = sorted(p["rejected"][0]["content"] for p in pairs)
    assert chosen == rejected
    # two wordings of each scene corrected (--wordings 2): the other two are held out, none of them asked
    twice = scene_pairs(scenes, asked=2)
    assert len(twice) == 52 * 2 * 3 and len(scene_pairs(scenes, heldout=False, asked=2)) == 52 * 2 * 3
    asked_twice = {w for s in scenes for w in s.wordings[:2]}
    assert not asked_twice & {p["prompt"][0]["content"] for p in twice}


def test_feedback_demo_bad_input(tmp_path, capsys):
    from llm_recipes.config import ConfigError

    with pytest.raises(ConfigError, match=r"corrections must be in \[1, 52\], got 0"):
        main([str(RECIPE), "--corrections", "0"])
    with pytest.raises(ConfigError, match=r"wordings must be in \[1, 3\], got 4"):
        main([str(RECIPE), "--wordings", "4"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--run_dir", str(tmp_path / "run")]) == 1
    assert "has no YAML for: serve, feedback, dpo, evaluate" in capsys.readouterr().err
    # a serve.yaml whose store lies outside the run folder (real users' feedback) is refused, untouched
    recipe = _toy_recipe(tmp_path, tmp_path / "heldout.jsonl")
    serve = yaml.safe_load((recipe / "serve.yaml").read_text())
    (recipe / "serve.yaml").write_text(yaml.safe_dump({**serve, "output_dir": str(tmp_path / "users" / "serve")}))
    store = tmp_path / "users" / "serve" / "feedback.sqlite"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"real feedback")
    assert main([str(recipe), "--run_dir", str(tmp_path / "run")]) == 1
    assert "is outside the run folder" in capsys.readouterr().err
    assert store.read_bytes() == b"real feedback"
    # a base run without a finished pretrain and clean stage
    (tmp_path / "again").mkdir()
    recipe = _toy_recipe(tmp_path / "again", tmp_path / "heldout.jsonl")
    assert main([str(recipe), "--run_dir", str(tmp_path / "run2"), "--base_run", str(tmp_path / "users")]) == 1
    err = capsys.readouterr().err
    assert "base_run" in err and "pretrain/final" in err and "expected a run folder" in err


def test_feedback_demo_end_to_end(tiny_model_dir, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus()[-40:]))
    recipe = _toy_recipe(tmp_path, heldout, max_steps=30)
    run_dir = tmp_path / "run"
    base_run = tmp_path / "base-run"  # a finished run whose model is corrected (--base_run)
    shutil.copytree(tiny_model_dir, base_run / "pretrain" / "final")
    write_clean_folder(base_run / "clean", topics=4)

    assert main([str(recipe), "--run_dir", str(run_dir), "--corrections", "13",  # one scene per group
                 "--base_run", str(base_run)]) == 0
    assert (run_dir / "pretrain" / "final" / "model.safetensors").is_file() and (run_dir / "clean").is_dir()

    conversation = [json.loads(line) for line in (run_dir / "demo" / "conversation.jsonl").read_text().splitlines()]
    assert len(conversation) == 13 and all("feedback_id" in c for c in conversation)  # a random model is wrong
    feedback = json.loads((run_dir / "feedback" / "feedback_summary.json").read_text())
    assert feedback["rows"] == 13 and feedback["dpo_pairs"] == 13
    assert (run_dir / "serve" / "stage_complete.json").is_file()  # the server was stopped cleanly
    # DPO learnt its training pairs: the user's word over the model's own answer, relative to the reference
    logged = [json.loads(line) for line in (run_dir / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [m for m in logged if "rewards/accuracies" in m][-1]["rewards/accuracies"] >= 0.9
    assert all(m["text_loss"] > 0 for m in logged if "loss" in m)  # the recipe's rehearsal on the corpus' text

    summary = json.loads((run_dir / "demo" / "summary.json").read_text())
    assert summary["corrections"] == 13 and summary["heldout_pairs"] == 13 * 3 * 3
    held, corrected = summary["preferences.accuracy"], summary["corrected_prompts.accuracy"]
    assert held["n"] == 117 and corrected["n"] == 39
    for row in (held, corrected, summary["heldout.bits_per_byte"]):
        for model in ("before", "after"):
            low, high = row[model]["interval"]
            assert low <= row[model]["value"] <= high
        assert row["paired"]["verdict"] in ("better", "worse", "cannot tell") and row["paired"]["items"] == row["n"]
    # What is NOT achieved at this size (nor at the recipe's size, see recipes/feedback-demo/README.md): the
    # scene's word is not measurably preferred over its group's other words on held-out wordings, so this test
    # does not claim it; the summary states the verdict as measured.
    assert summary["corrected_behaviour_improved"] == (held["paired"]["verdict"] == "better")
    assert summary["heldout_bpb_paired_verdict"] == summary["heldout.bits_per_byte"]["paired"]["verdict"]

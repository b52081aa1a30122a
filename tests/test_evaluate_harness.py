"""lm-evaluation-harness tasks inside the evaluate stage: the harness's own scoring, kept per document, with
intervals, paired comparisons, the centred average, and clear errors for unknown or unreachable tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evaluate_helpers import copy_model, write_jsonl

from llm_recipes.evaluate import main
from llm_recipes.evaluation.harness import core_result

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["english_cloze", "python_docs_mc"]


def _two_choice_task(folder: Path) -> Path:
    """A task of our own in the user's include folder: two choices per document (chance 0.5)."""
    rows = [{"context": f"Item {i}: the answer is", "choices": ["yes", "no"], "gold": i % 2} for i in range(12)]
    write_jsonl(folder / "yes_no.jsonl", rows)
    (folder / "yes_no.yaml").write_text(
        "task: yes_no\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(folder / 'yes_no.jsonl'))}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{gold}}\"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_harness_tasks_scored_with_intervals_core_and_card(tiny_model_dir, tmp_path):
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from llm_recipes.evaluation.harness import task_manager

    base = copy_model(tiny_model_dir, tmp_path / "base")
    other = copy_model(tiny_model_dir, tmp_path / "other")
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")  # a different model: its embeddings perturbed
    torch.manual_seed(1)
    weights = {k: v + 0.5 * torch.randn_like(v) if "embed" in k else v for k, v in weights.items()}
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    include = _two_choice_task(tmp_path / "tasks")
    out = tmp_path / "eval"
    assert main(["--models", f"base={base}", f"other={other}", "--harness_tasks", *SHIPPED, "yes_no",
                 "--harness_include_path", str(include), "--harness_limit", "10", "--output_dir", str(out)]) == 0
    results = json.loads((out / "eval_results.json").read_text())

    info = results["tasks"]["yes_no"]
    assert info["kind"] == "harness" and info["output_type"] == "multiple_choice" and info["num_fewshot"] == 0
    for name in ("base", "other"):
        scored = results["models"][name]["results"]
        assert all(scored[t]["n"] == 10 for t in SHIPPED + ["yes_no"])
        for task in SHIPPED + ["yes_no"]:
            r = scored[task]
            assert len(r["per_item"]["acc"]) == r["n"]
            low, high = r["intervals"]["acc"]
            assert low <= r["acc"] <= high
            # centred on acc_norm where the harness reports it; chance is 1/choices per document
            score = "acc_norm" if "acc_norm" in r else "acc"
            assert r["centred_on"] == score
            expected = [(v - c) / (1 - c) for v, c in zip(r["per_item"][score], r["per_item"]["chance"])]
            assert r["centred"] == pytest.approx(sum(expected) / len(expected))
        assert all(c == 0.5 for c in scored["yes_no"]["per_item"]["chance"])
        assert all(c == 0.25 for c in scored["english_cloze"]["per_item"]["chance"])
        core = scored["harness_core"]
        means = [scored[t]["centred"] for t in SHIPPED + ["yes_no"]]
        assert core["centred"] == pytest.approx(sum(means) / 3)  # every task counts equally
        low, high = core["intervals"]["centred"]
        assert low <= core["centred"] <= high
    assert results["tasks"]["harness_core"]["tasks"] == SHIPPED + ["yes_no"]
    diff = results["comparisons"]["models"]["other"]["harness_core"]["centred"]
    assert diff["items"] == 30 and diff["verdict"] in ("better", "worse", "cannot tell")
    assert "harness_core" in (out / "comparison.md").read_text()
    card = (base / "README.md").read_text()
    assert "harness_core" in card and "yes_no" in card

    # the per-document scores are the harness's own: their mean is what lm_eval reports for the same model
    lm = HFLM(pretrained=str(base), trust_remote_code=True, batch_size=8, device="cpu")
    theirs = lm_eval.simple_evaluate(model=lm, tasks=["yes_no", "english_cloze"], limit=10,
                                     task_manager=task_manager(str(include)))["results"]
    ours = results["models"]["base"]["results"]
    assert ours["yes_no"]["acc"] == pytest.approx(theirs["yes_no"]["acc,none"])
    assert ours["english_cloze"]["acc_norm"] == pytest.approx(theirs["english_cloze"]["acc_norm,none"])


def test_unknown_harness_task_fails_before_loading_models(tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(["--models", f"m={tmp_path / 'no-model-here'}", "--harness_tasks", "hellaswagg",
                 "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "'hellaswagg' is not an lm-evaluation-harness task" in err and "hellaswag" in err
    assert not (out / "eval_results.json").exists()


def test_standard_task_without_hub_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    code = main(["--models", f"m={tmp_path / 'model'}", "--harness_tasks", "piqa", "--output_dir",
                 str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2
    assert "could not load the dataset of lm-evaluation-harness task 'piqa'" in err and "Hub" in err


def test_task_not_scored_by_accuracy_is_refused_before_models_load(tmp_path, capsys):
    folder = tmp_path / "tasks"
    write_jsonl(folder / "ppl.jsonl", [{"text": "some text"}])
    (folder / "ppl_only.yaml").write_text(
        "task: ppl_only\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(folder / 'ppl.jsonl'))}\n"
        "output_type: loglikelihood_rolling\ntest_split: test\ndoc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\nmetadata:\n  version: 1.0\n", encoding="utf-8")
    code = main(["--models", f"m={tmp_path / 'no-model'}", "--harness_tasks", "ppl_only",
                 "--harness_include_path", str(folder), "--output_dir", str(tmp_path / "eval")])
    assert code == 2
    assert "'ppl_only' is scored by word_perplexity; only tasks scored by acc_norm or acc" in capsys.readouterr().err


def test_bad_harness_settings_are_config_errors(tmp_path):
    from llm_recipes.config import ConfigError

    for flag, value in (("--harness_limit", "0"), ("--harness_num_fewshot", "-1")):
        with pytest.raises(ConfigError, match=flag.lstrip("-")):
            main(["--models", "m=x", "--harness_tasks", "english_cloze", flag, value,
                  "--output_dir", str(tmp_path / "e")])


def test_recipes_name_standard_tasks_the_harness_knows():
    import yaml

    from llm_recipes.evaluation.harness import task_manager

    manager = task_manager()
    for recipe in ("tinystories", "gpt2-124m"):
        cfg = yaml.safe_load((REPO / "recipes" / recipe / "evaluate.yaml").read_text())
        assert {"hellaswag", "arc_easy", "piqa", "lambada_openai"} <= set(cfg["harness_tasks"]), recipe
        assert set(cfg["harness_tasks"]) <= set(manager.all_tasks), recipe


def test_core_weights_every_task_equally():
    results = {"a": {"centred": 1.0, "per_item": {"centred": [1.0, 1.0]}},
               "b": {"centred": 0.0, "per_item": {"centred": [0.0] * 6}}}
    core = core_result(results, ["a", "b"])
    assert core["centred"] == pytest.approx(0.5) and core["n"] == 8
    assert core_result(results, ["a", "missing"]) is None

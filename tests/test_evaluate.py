"""The evaluate stage: known-answer scoring, agreement with lm-evaluation-harness, reports, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from evaluate_helpers import copy_model, memorizing_model, single_token_words, uniform_model, write_jsonl

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread; with two threads on a shared 2-core machine the threads
    wait on each other (measured: 10x slower under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scorer(model, tokenizer, **kwargs):
    from llm_recipes.evaluation import LMScorer

    return LMScorer(model, tokenizer, progress=False, **kwargs)


# -- known answers ----------------------------------------------------------------------------------

def test_uniform_logits_give_vocab_size_perplexity_and_chance_accuracy(tiny_tokenizer):
    from conftest import tiny_corpus

    from llm_recipes.evaluation.data import ChoiceItem, ChoiceTask
    from llm_recipes.evaluation.tasks import evaluate_choice_task, evaluate_perplexity

    model = uniform_model(tiny_tokenizer)
    vocab = model.config.vocab_size
    scorer = _scorer(model, tiny_tokenizer, batch_size=4, max_length=64)
    # long texts go through several windows; every token still costs exactly ln V
    result = evaluate_perplexity(scorer, tiny_corpus()[:3], stride=48)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)

    words = single_token_words(tiny_tokenizer, 12)
    assert len(words) == 12
    items = [ChoiceItem(context=f"Item {i} reads", choices=[" " + w for w in words[j:j + 3]], gold=i % 3,
                        lengths=[len(w) for w in words[j:j + 3]]) for i, j in enumerate(range(0, 9))]
    accuracy = evaluate_choice_task(scorer, ChoiceTask("uniform", "test", "cloze", items))
    assert accuracy["acc"] == pytest.approx(1 / 3) and accuracy["chance"] == pytest.approx(1 / 3)


def test_memorized_sentence_scores_full_marks_on_its_cloze_items(tiny_tokenizer):
    from llm_recipes.evaluation.data import ChoiceTask, to_choice_item
    from llm_recipes.evaluation.tasks import evaluate_choice_task

    model, final_loss = memorizing_model(tiny_tokenizer, "The cat sat on the mat and looked at the moon.")
    assert final_loss < 0.05
    rows = [{"context": "The cat sat on the", "candidates": ["dog", "mat", "roof", "sky"], "answer": "mat"},
            {"context": "The cat sat on the mat and looked at the", "candidates": ["sun", "floor", "moon", "door"],
             "answer": "moon"},
            {"context": "The cat", "candidates": ["ran", "sat", "ate", "slept"], "answer": "sat"}]
    task = ChoiceTask("memorized", "test", "cloze", [to_choice_item(r, "cloze", "test") for r in rows])
    scorer = _scorer(model, tiny_tokenizer, batch_size=3)
    result = evaluate_choice_task(scorer, task)
    assert result["acc"] == 1.0 and result["acc_norm"] == 1.0
    # and the answer is what the model would write itself
    assert all(s.greedy for s in scorer.score_continuations([("The cat sat on the", " mat")]))


def test_bits_per_byte_is_loss_times_tokens_over_ln2_bytes(tiny_model_dir, tiny_tokenizer):
    import torch

    from llm_recipes.evaluation import TextScore, load_model_and_tokenizer, perplexity_summary

    # by hand: 10 ln2 nats over 4 tokens and 10 bytes is exactly 1 bit per byte and perplexity 2^(10/4)
    hand = perplexity_summary([TextScore(nll=10 * math.log(2), tokens=4, bytes=10, words=2)])
    assert hand["bits_per_byte"] == pytest.approx(1.0) and hand["perplexity"] == pytest.approx(2 ** 2.5)

    model, tokenizer, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    text = "Naïve café: 3 bytes for ï and é."  # multi-byte characters: bytes != characters
    ids = tokenizer(text)["input_ids"]  # BOS + text tokens
    assert ids[0] == tokenizer.bos_token_id
    with torch.no_grad():
        loss = float(model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss)  # mean nats/token
    tokens, n_bytes = len(ids) - 1, len(text.encode("utf-8"))
    assert n_bytes == len(text) + 4  # ï, é twice each: 2 bytes apiece
    ours = perplexity_summary(_scorer(model, tokenizer).score_texts([text]))
    assert ours["tokens"] == tokens and ours["bytes"] == n_bytes
    assert ours["bits_per_byte"] == pytest.approx(loss * tokens / (math.log(2) * n_bytes), rel=1e-5)
    assert ours["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


@pytest.mark.parametrize("n,length,stride", [(1, 4, 4), (7, 4, 4), (9, 4, 1), (30, 8, 3), (8, 8, 5), (100, 16, 16)])
def test_sliding_windows_score_every_token_once_with_bounded_length(tiny_model_dir, n, length, stride):
    from llm_recipes.evaluation import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    scorer = _scorer(model, tokenizer, max_length=length)
    ids = list(range(10, 10 + n))
    targets = []
    for window, new in scorer.windows_for(ids, stride):
        assert 2 <= len(window) <= length + 1 and 1 <= new <= len(window) - 1
        targets += window[-new:]
    assert targets == ids


def test_sliding_window_with_overlap_gives_no_worse_context(tiny_model_dir):
    from conftest import tiny_corpus

    from llm_recipes.evaluation import load_model_and_tokenizer, perplexity_summary

    model, tokenizer, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    text = tiny_corpus()[0][:400]
    full = perplexity_summary(_scorer(model, tokenizer).score_texts([text]))  # fits in 256 tokens
    one_window = perplexity_summary(_scorer(model, tokenizer, max_length=512).score_texts([text]))
    strided = perplexity_summary(_scorer(model, tokenizer, max_length=32).score_texts([text], stride=8))
    assert full["tokens"] < 256 and one_window["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert strided["tokens"] == full["tokens"]


def test_batched_generation_matches_one_at_a_time(tiny_model_dir):
    from llm_recipes.evaluation import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    prompts = ["Hello", "The for statement is used to iterate over", "x"]
    batched = _scorer(model, tokenizer, batch_size=3).generate(prompts, max_new_tokens=6)
    single = [_scorer(model, tokenizer, batch_size=1).generate([p], max_new_tokens=6)[0] for p in prompts]
    assert batched == single


def test_stock_gpt2_style_tokenizer_without_bos_is_scored_from_eos(tiny_tokenizer):
    """Stock models (GPT-2) have no BOS: sequences then start with EOS, as GPT-2 separated documents."""
    from llm_recipes.evaluation.scoring import prefix_token_id

    class NoBos:
        bos_token_id = None
        eos_token_id = 7

    assert prefix_token_id(NoBos()) == 7
    assert prefix_token_id(tiny_tokenizer) == tiny_tokenizer.bos_token_id


# -- lm-evaluation-harness --------------------------------------------------------------------------

@pytest.mark.slow
def test_perplexity_and_cloze_agree_with_lm_evaluation_harness(tiny_model_dir, tmp_path):
    """Our numbers against lm_eval's HFLM on the same saved model: the task YAML the stage writes for
    the held-out text, and the shipped english_cloze task."""
    import lm_eval
    from conftest import tiny_corpus
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llm_recipes.evaluate import main

    texts = [t[:1500] for t in tiny_corpus()[:4]]
    write_jsonl(tmp_path / "held.jsonl", [{"text": t} for t in texts])
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "eval"
    assert main(["--models", f"tiny={model_dir}", "--heldout_data", str(tmp_path / "held.jsonl"),
                 "--choice_tasks", "builtin:english_cloze", "builtin:python_docs_cloze", "builtin:python_docs_mc",
                 "--output_dir", str(out)]) == 0
    ours = json.loads((out / "eval_results.json").read_text())["models"]["tiny"]["results"]

    # held-out text: lm_eval's rolling log-likelihood puts a BOS prefix before each text's tokens, as we do;
    # with its default add_bos_token it would also score the BOS our tokenizer adds (one token more per text,
    # which moves word perplexity of a random model by a few %), so compare like with like
    lm = HFLM(pretrained=str(model_dir), trust_remote_code=True, batch_size=8, device="cpu", add_bos_token=False)
    manager = TaskManager(include_path=[str(out / "lm_eval_tasks")])
    text = lm_eval.simple_evaluate(model=lm, tasks=["heldout_text"], task_manager=manager)["results"]["heldout_text"]
    assert ours["heldout"]["bits_per_byte"] == pytest.approx(text["bits_per_byte,none"], rel=0.01)
    assert ours["heldout"]["word_perplexity"] == pytest.approx(text["word_perplexity,none"], rel=0.01)
    assert ours["heldout"]["byte_perplexity"] == pytest.approx(text["byte_perplexity,none"], rel=0.01)

    # the shipped tasks with lm_eval's defaults: contexts start with BOS on both sides, so the
    # log-likelihoods are the same; lm_eval breaks exact ties by taking the first choice where we share the
    # credit, so allow one item of difference
    lm = HFLM(pretrained=str(model_dir), trust_remote_code=True, batch_size=8, device="cpu")
    manager = TaskManager(include_path=[str(REPO / "llm_recipes" / "evaluation" / "lm_eval_tasks")])
    names = ["english_cloze", "python_docs_cloze", "python_docs_mc"]
    theirs = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager)["results"]
    for name in names:
        items = ours[name]["n"]
        builtin = REPO / "llm_recipes" / "evaluation" / "lm_eval_tasks" / f"{name}.jsonl"
        assert items == sum(1 for line in builtin.open() if line.strip())
        assert ours[name]["acc"] == pytest.approx(theirs[name]["acc,none"], abs=1 / items + 1e-9), name
        assert ours[name]["acc_norm"] == pytest.approx(theirs[name]["acc_norm,none"], abs=1 / items + 1e-9), name


# -- the stage --------------------------------------------------------------------------------------

def _stage_inputs(tmp_path, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import tiny_corpus

    clean = tmp_path / "clean"
    (clean / "validation").mkdir(parents=True)
    pq.write_table(pa.table({"text": [t[:800] for t in tiny_corpus()[:6]]}), clean / "validation" / "part-0.parquet")
    base = copy_model(tiny_model_dir, tmp_path / "pretrain" / "final")
    sft = copy_model(tiny_model_dir, tmp_path / "sft" / "final")
    (sft / "README.md").write_text("---\nlicense: apache-2.0\ntags:\n- llm-recipes\n---\n\n"
                                   "# My SFT model\n\nBody text.\n")
    qa = write_jsonl(tmp_path / "sft" / "data" / "heldout.jsonl", [
        {"messages": [{"role": "user", "content": "What does len return?"},
                      {"role": "assistant", "content": "The number of items in a container."}]},
        {"prompt": "What does abs return?", "completion": "The absolute value of the argument."}])
    prefs = write_jsonl(tmp_path / "dpo" / "data" / "test.jsonl", [
        {"prompt": [{"role": "user", "content": "Name a Python keyword."}],
         "chosen": [{"role": "assistant", "content": "def"}],
         "rejected": [{"role": "assistant", "content": "banana"}]},
        {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}])
    metrics = write_jsonl(tmp_path / "pretrain" / "metrics.jsonl", [
        {"step": s, "loss": 6 - s / 10, "lr": 1e-3} for s in range(0, 40, 5)] + [{"step": 40, "val_loss": 2.5}])
    return clean, base, sft, qa, prefs, metrics


def test_stage_writes_results_comparison_and_model_cards_and_resumes(tiny_model_dir, tmp_path, capsys):
    from llm_recipes.evaluate import main
    from llm_recipes.fileio import is_complete

    clean, base, sft, qa, prefs, metrics = _stage_inputs(tmp_path, tiny_model_dir)
    out = tmp_path / "evaluate"
    argv = ["--models", f"sft={sft}", f"base={base}", "--heldout_data", str(clean),
            "--choice_tasks", "builtin:english_cloze", "builtin:python_docs_mc", "--max_items_per_task", "8",
            "--qa_data", str(qa), "--max_new_tokens", "8", "--preference_data", str(prefs),
            "--metrics_files", f"pretrain={metrics}", "--output_dir", str(out), "--per_device_eval_batch_size", "4"]
    assert main(argv) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert list(results["models"]) == ["sft", "base"]  # the order asked for
    assert list(results["tasks"]) == ["heldout", "english_cloze", "python_docs_mc", "qa", "preferences"]
    sft_results = results["models"]["sft"]["results"]
    assert sft_results["heldout"]["documents"] == 6 and sft_results["english_cloze"]["n"] == 8
    assert 0 <= sft_results["qa"]["f1"] <= 1 and sft_results["preferences"]["n"] == 2
    # same weights, same numbers
    assert sft_results == {k: {**v, "seconds": sft_results[k]["seconds"]}
                           for k, v in results["models"]["base"]["results"].items()}
    # every headline metric has a 95% interval around it; the same weights compared pairwise cannot be told apart
    for task, result in sft_results.items():
        for metric, (low, high) in result["intervals"].items():
            assert low <= result[metric] <= high, (task, metric)
    assert results["comparisons"]["reference"] == "sft"
    for metrics in results["comparisons"]["models"]["base"].values():
        for d in metrics.values():
            assert d["difference"] == 0 and d["interval"] == [0, 0] and d["verdict"] == "cannot tell"
    assert any("english_cloze: 8 items is too few" in w for w in results["warnings"])
    table = (out / "comparison.md").read_text()
    assert "| base |" in table and "| sft |" in table
    assert "heldout bits_per_byte" in table and "Training curves" in table
    assert "Paired differences against sft" in table and "cannot tell" in table and "## Warnings" in table
    assert (out / "comparison.png").stat().st_size > 10_000
    assert is_complete(out) and (out / "resolved_config.yaml").is_file()

    from huggingface_hub import ModelCard

    card = ModelCard((sft / "README.md").read_text())
    assert card.data.license == "apache-2.0" and "Body text." in card.text  # the rest of the card is kept
    metrics_in_card = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert metrics_in_card[("heldout", "bits_per_byte")] == pytest.approx(sft_results["heldout"]["bits_per_byte"])
    assert ("english_cloze", "acc") in metrics_in_card and ("preferences", "accuracy") in metrics_in_card

    # a second run reuses every finished (model, task) and gives the same file
    capsys.readouterr()
    assert main(argv) == 0
    assert "every task already scored" in capsys.readouterr().out
    assert json.loads((out / "eval_results.json").read_text()) == results
    card = ModelCard((sft / "README.md").read_text())
    assert len(card.data.eval_results) == len(metrics_in_card)  # merged, not duplicated


def test_model_index_merge_replaces_same_metric_and_keeps_others(tmp_path):
    from huggingface_hub import ModelCard

    from llm_recipes.publishing.model_card import update_model_index

    folder = tmp_path / "m"
    folder.mkdir()
    entry = dict(task_type="text-generation", dataset_type="x", dataset_name="heldout", metric_type="perplexity")
    update_model_index(folder, [{**entry, "metric_value": 10.0}, {**entry, "metric_type": "acc", "metric_value": 0.5}],
                       model_name="mine")
    update_model_index(folder, [{**entry, "metric_value": 8.0}])
    card = ModelCard((folder / "README.md").read_text())
    assert card.data.model_name == "mine"
    results = sorted((r.metric_type, r.metric_value) for r in card.data.eval_results)
    assert results == [("acc", 0.5), ("perplexity", 8.0)]
    with pytest.raises(ValueError, match="missing"):
        update_model_index(folder, [{"task_type": "text-generation"}])


# -- bad input --------------------------------------------------------------------------------------

def test_choice_file_with_missing_fields_is_a_clear_error(tmp_path):
    from llm_recipes.evaluation import EvalInputError
    from llm_recipes.evaluation.data import load_choice_task

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "The cat sat on the", "candidates": ["mat", "sky"]}])
    with pytest.raises(EvalInputError, match=r"bad.*row 0 has fields \['candidates', 'context'\].*answer"):
        load_choice_task(str(bad))
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [{"context": "a", "candidates": ["b", "c"], "answer": "b"},
                                                   {"context": "a", "candidates": ["b", "c"]}])
    with pytest.raises(EvalInputError, match="row 1"):
        load_choice_task(str(mixed))
    wrong = write_jsonl(tmp_path / "wrong.jsonl", [{"context": "a", "candidates": ["b", "c"], "answer": "z"}])
    with pytest.raises(EvalInputError, match="'z' is not one of"):
        load_choice_task(str(wrong))
    with pytest.raises(EvalInputError, match="unknown built-in set"):
        load_choice_task("builtin:nope")


def test_qa_and_preference_files_with_missing_fields_are_clear_errors(tmp_path):
    from llm_recipes.evaluation import EvalInputError
    from llm_recipes.evaluation.data import load_preferences, load_qa

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Why?"}])
    with pytest.raises(EvalInputError, match=r"row 0: fields \['question'\]; expected 'messages'"):
        load_qa(str(qa))
    prefs = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(EvalInputError, match=r"missing field\(s\) \['rejected'\]"):
        load_preferences(str(prefs))


def test_empty_sets_are_clear_errors(tmp_path, tiny_model_dir):
    from llm_recipes.evaluate import main
    from llm_recipes.evaluation import EvalInputError, choice_accuracy
    from llm_recipes.evaluation.data import load_choice_task, load_heldout_texts

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalInputError, match="no items"):
        load_choice_task(str(empty))
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": "  "}])
    with pytest.raises(EvalInputError, match="empty set"):
        load_heldout_texts(str(blank))
    with pytest.raises(ValueError, match="empty set"):
        choice_accuracy([], [])
    # the stage: nothing to evaluate, and no models
    assert main(["--models", str(tiny_model_dir), "--output_dir", str(tmp_path / "o1")]) == 2
    assert main(["--heldout_data", str(blank), "--output_dir", str(tmp_path / "o2")]) == 2


def test_model_folder_without_tokenizer_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    from llm_recipes.evaluate import main
    from llm_recipes.evaluation import EvalInputError, load_model_and_tokenizer

    bare = tmp_path / "checkpoint"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(EvalInputError, match="has no tokenizer"):
        load_model_and_tokenizer(bare)
    with pytest.raises(EvalInputError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "nowhere" / "final")
    with pytest.raises(EvalInputError, match="no config.json"):
        load_model_and_tokenizer(tmp_path)
    held = write_jsonl(tmp_path / "held.jsonl", [{"text": "some held-out text"}])
    assert main(["--models", f"ckpt={bare}", "--heldout_data", str(held), "--output_dir", str(tmp_path / "o")]) == 2
    assert "has no tokenizer" in capsys.readouterr().err
    # with the tokenizer given separately a checkpoint scores fine
    assert main(["--models", f"ckpt={bare}", "--heldout_data", str(held), "--tokenizer_name_or_path",
                 str(tiny_model_dir), "--output_dir", str(tmp_path / "o"), "--update_model_card", "false"]) == 0


def test_unknown_config_key_is_rejected(tmp_path):
    from llm_recipes.config import ConfigError
    from llm_recipes.evaluate import main

    with pytest.raises(ConfigError, match="unknown key 'held_out_set'"):
        main(["--held_out_set", "x", "--output_dir", str(tmp_path)])


@pytest.mark.parametrize("recipe", ["quickstart", "debug"])
def test_recipes_parse(recipe, monkeypatch, tmp_path):
    from llm_recipes.config import parse_config
    from llm_recipes.evaluate import EvaluateConfig
    from llm_recipes.evaluation.data import BUILTIN_SETS
    from llm_recipes.evaluation.everyday import NAME as EVERYDAY

    monkeypatch.setenv("LLM_RECIPES_RUN_DIR", str(tmp_path / "run"))
    (cfg,) = parse_config([EvaluateConfig], ["--config", str(REPO / "recipes" / recipe / "evaluate.yaml")], "evaluate")
    assert cfg.output_dir == str(tmp_path / "run" / "evaluate")
    assert cfg.models and all("=" in m for m in cfg.models)
    assert all(t.split(":", 1)[1] in (*BUILTIN_SETS, EVERYDAY) for t in cfg.choice_tasks if t.startswith("builtin:"))


def test_models_spec_names_and_checkpoint_globs(tmp_path):
    from llm_recipes.evaluation import EvalInputError
    from llm_recipes.evaluation.suite import parse_models

    for step in (200, 100):
        (tmp_path / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
    models = parse_models([f"base={tmp_path}/x/final", f"{tmp_path}/sft/final", f"{tmp_path}/checkpoints/step-*"])
    assert list(models) == ["base", "sft", "step-00000100", "step-00000200"]
    with pytest.raises(EvalInputError, match="used twice"):
        parse_models(["a=x", "a=y"])
    with pytest.raises(EvalInputError, match="no folder matches"):
        parse_models([f"c={tmp_path}/nothing-*"])


def test_stock_transformers_model_is_scored_next_to_ours(tiny_model_dir, tiny_tokenizer, tmp_path):
    """A stock architecture (GPT-2: absolute positions, its own code in transformers) goes through the same
    scorer as RecipeGPT, so a baseline is comparable; bits per byte does not depend on the tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from llm_recipes.evaluate import main
    from llm_recipes.tokenizer.bpe import save_tokenizer

    torch.manual_seed(0)
    stock = GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=128, n_embd=32, n_layer=1,
                                       n_head=2, bos_token_id=tiny_tokenizer.bos_token_id,
                                       eos_token_id=tiny_tokenizer.eos_token_id))
    stock.save_pretrained(tmp_path / "gpt2")
    save_tokenizer(tiny_tokenizer, tmp_path / "gpt2")
    held = write_jsonl(tmp_path / "held.jsonl", [{"text": "The for statement iterates over a sequence. " * 12}])
    out = tmp_path / "eval"
    assert main(["--models", f"ours={tiny_model_dir}", f"gpt2={tmp_path / 'gpt2'}", "--heldout_data", str(held),
                 "--max_length", "64", "--choice_tasks", "builtin:english_cloze", "--output_dir", str(out),
                 "--update_model_card", "false"]) == 0
    results = json.loads((out / "eval_results.json").read_text())["models"]
    assert json.loads((tmp_path / "gpt2" / "config.json").read_text())["model_type"] == "gpt2"
    for name in ("ours", "gpt2"):
        held_out = results[name]["results"]["heldout"]
        assert held_out["max_length"] == 64 and held_out["tokens"] > 64  # several windows
        assert math.isfinite(held_out["bits_per_byte"]) and 0 <= results[name]["results"]["english_cloze"]["acc"] <= 1


def test_continuations_longer_than_the_context_window_are_scored_in_pieces(tiny_model_dir):
    """A long answer (preference pairs, QA references) must not crash or lose tokens when context +
    continuation exceed max_length: each continuation token is scored exactly once."""
    from llm_recipes.evaluation import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    scorer = _scorer(model, tokenizer, max_length=16, batch_size=3)
    for n_context, n_cont in ((3, 5), (40, 5), (3, 40), (30, 33)):
        full = list(range(3, 3 + n_context + n_cont))
        windows = scorer.continuation_windows(full, n_context)
        targets = [t for ids, keep in windows for t in ids[-keep:]]
        assert targets == full[n_context:]
        assert all(len(ids) <= 17 for ids, _ in windows)
    context, answer = "Question: what does it do?", " It joins path components. " * 8
    short, long_ = scorer.score_continuations([(context, " It joins."), (context, answer)])
    assert long_.tokens == len(scorer.encode_pair(context, answer)[1]) > 16
    assert math.isfinite(long_.logprob) and long_.logprob < short.logprob
    # with a window big enough for everything, the same tokens are scored in one piece
    whole = _scorer(model, tokenizer, max_length=256).score_continuations([(context, answer)])[0]
    assert whole.tokens == long_.tokens


def test_heldout_budget_cuts_the_last_document(tmp_path):
    from llm_recipes.evaluation.data import load_heldout_texts

    held = write_jsonl(tmp_path / "held.jsonl", [{"text": "é" * 50}, {"text": "b" * 100}, {"text": "c" * 10}])
    texts = load_heldout_texts(str(held), max_bytes=150)
    assert texts == ["é" * 50, "b" * 50] and sum(len(t.encode()) for t in texts) == 150
    assert load_heldout_texts(str(held), max_bytes=5) == ["éé"]  # a 2-byte character is never split
    assert load_heldout_texts(str(held), max_documents=2) == ["é" * 50, "b" * 100]


def test_heldout_budget_samples_the_whole_split_not_its_first_source(tmp_path):
    """A clean split is in source order; a budget takes documents at even steps over all of it."""
    from llm_recipes.evaluation.data import load_heldout_texts

    rows = [{"text": f"{source} document {i}"} for source in ("pydoc", "torch", "sympy", "numpy")
            for i in range(25)]
    held = write_jsonl(tmp_path / "held.jsonl", rows)
    texts = load_heldout_texts(str(held), max_documents=8)
    assert [t.split()[0] for t in texts] == ["pydoc", "pydoc", "torch", "torch", "sympy", "sympy", "numpy", "numpy"]
    texts = load_heldout_texts(str(held), max_bytes=20 * 16)  # ~16 documents' worth
    assert {t.split()[0] for t in texts} == {"pydoc", "torch", "sympy", "numpy"}
    assert sum(len(t.encode()) for t in texts) <= 20 * 16
    order = [[r["text"] for r in rows].index(t) for t in texts[:-1]]  # the last one is cut to the budget
    assert order == sorted(order)  # file order kept

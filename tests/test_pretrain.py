"""Pretraining loop invariants on CPU with a tiny model: resume, accumulation, schedules, saved model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pretrain_helpers import one_torch_thread, tiny_config, write_clean_dataset  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    return write_clean_dataset(tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    # one pre-tokenized copy shared by the runs of this module
    return tmp_path_factory.mktemp("tokens")


class Interrupt(Exception):
    """Stands in for a crash at a chosen step."""


def _final_state(output_dir):
    from safetensors.torch import load_file

    return load_file(str(output_dir / "final" / "model.safetensors"))


@pytest.mark.parametrize("data_mode,optim", [("shards", "adamw"), ("stream", "adamw"), ("shards", "muon")])
def test_resume_equals_uninterrupted(tmp_path, clean_dir, tokens_dir, tiny_tokenizer_dir, data_mode, optim):
    """6 steps straight vs 3 steps, a crash, resume from the step-3 checkpoint, 3 more: identical losses
    (exact up to 1e-6 relative: same ops on the same CPU) and identical final weights."""
    from llm_recipes.training.loop import pretrain

    common = dict(max_steps=6, save_steps=3, data_mode=data_mode, tokenized_path=str(tokens_dir), shuffle_buffer=0,
                  sample_prompts=[], optim=optim)
    straight = pretrain(tiny_config(tmp_path / "a", clean_dir, tiny_tokenizer_dir, **common))

    def crash(step, batches):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        pretrain(tiny_config(tmp_path / "b", clean_dir, tiny_tokenizer_dir, **common), on_batch=crash)
    resumed = pretrain(tiny_config(tmp_path / "b", clean_dir, tiny_tokenizer_dir, resume_from_checkpoint="latest",
                                   **common))
    assert len(resumed.losses) == 3
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-6)
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)
    # metrics.jsonl of the resumed run tells one consistent trajectory
    logged = [r["loss"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    assert logged == pytest.approx(straight.losses, rel=1e-6)


def _grads_after_one_step(tmp_path, clean_dir, tokens_dir, tokenizer_dir, batch, accum):
    from llm_recipes.training.loop import pretrain

    torch.manual_seed(0)
    from conftest import make_tiny_config
    from transformers import AutoTokenizer

    import llm_recipes  # noqa: F401
    from llm_recipes.model import RecipeGPTForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = RecipeGPTForCausalLM(make_tiny_config(len(tok)))
    grads = {}
    for name, p in model.named_parameters():
        # the last call per parameter holds the gradient of the whole accumulated step
        p.register_post_accumulate_grad_hook(lambda p, name=name: grads.__setitem__(name, p.grad.detach().clone()))
    result = pretrain(tiny_config(tmp_path, clean_dir, tokenizer_dir, max_steps=1, per_device_train_batch_size=batch,
                                  gradient_accumulation_steps=accum, tokenized_path=str(tokens_dir), sample_prompts=[],
                                  max_grad_norm=0.0), model=model)
    return result.losses[0], grads


def test_accumulation_invariance(tmp_path, clean_dir, tokens_dir, tiny_tokenizer_dir):
    """Micro-batch 8 x accumulation 1 equals micro-batch 1 x accumulation 8: same loss, same gradients
    (the loss is normalised by the token count of the whole step, not averaged per micro-batch)."""
    loss_a, grads_a = _grads_after_one_step(tmp_path / "a", clean_dir, tokens_dir, tiny_tokenizer_dir, 8, 1)
    loss_b, grads_b = _grads_after_one_step(tmp_path / "b", clean_dir, tokens_dir, tiny_tokenizer_dir, 1, 8)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


def test_final_model_loads_with_plain_transformers(tmp_path, clean_dir, tokens_dir, tiny_tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_recipes.tokenizer.bpe import end_of_turn_token_ids
    from llm_recipes.training.loop import pretrain

    result = pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=3, tokenized_path=str(tokens_dir),
                                  eval_steps=3, report_to=["tensorboard"]))
    final = result.final_dir
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.config.use_cache is True
    assert model.generation_config.eos_token_id == end_of_turn_token_ids(tok)
    out = model.generate(**tok("The", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] >= 2
    m = result.eval_metrics
    assert math.isclose(m["val_perplexity"], math.exp(m["val_loss"]), rel_tol=1e-9)
    assert 0 < m["val_bits_per_byte"] < m["val_loss"] / math.log(2)  # several bytes per token
    assert (tmp_path / "samples.jsonl").is_file() and (tmp_path / "stage_complete.json").is_file()
    assert "bits per byte" in (final / "README.md").read_text()
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))  # the TensorBoard tracker wrote
    # one metrics.jsonl line per logged step with what the issue names; MFU is n/a (null) on a CPU
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3]
    for r in train_lines:
        assert {"step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "elapsed"} <= set(r)
        assert r["tokens"] == r["step"] * 4 * 64 and r["grad_norm"] > 0 and r["tokens_per_sec"] > 0
        assert r["mfu"] is None
    val = [r for r in lines if "val_loss" in r]
    assert val[-1]["step"] == 3 and val[-1]["val_loss"] == pytest.approx(m["val_loss"])


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_a_plain_model(tmp_path, clean_dir, tokens_dir, tiny_tokenizer_dir):
    """torch_compile: true trains the same trajectory as eager mode (inductor reorders float sums, hence a
    tolerance) and the saved folder has the plain parameter names (no `_orig_mod.` prefix)."""
    from torch._dynamo.utils import counters

    from llm_recipes.training.loop import pretrain

    common = dict(max_steps=4, tokenized_path=str(tokens_dir), sample_prompts=[])
    eager = pretrain(tiny_config(tmp_path / "eager", clean_dir, tiny_tokenizer_dir, **common))
    counters.clear()
    compiled = pretrain(tiny_config(tmp_path / "compiled", clean_dir, tiny_tokenizer_dir, torch_compile=True,
                                    **common))
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really captured the model
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-4)
    assert compiled.eval_metrics["val_loss"] == pytest.approx(eager.eval_metrics["val_loss"], rel=1e-4)
    a, b = _final_state(tmp_path / "eager"), _final_state(tmp_path / "compiled")
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5)


def test_continued_pretraining_from_model_folder(tmp_path, clean_dir, tokens_dir, tiny_model_dir):
    """init_from starts from the saved weights (first loss equals the saved model's loss on that batch)."""
    from transformers import AutoModelForCausalLM

    from llm_recipes.training.evaluation import token_loss_sum
    from llm_recipes.training.loop import pretrain

    seen = []
    cfg = tiny_config(tmp_path, clean_dir, None, init_from=str(tiny_model_dir), max_steps=2,
                      model_overrides=None, tokenized_path=str(tokens_dir / "init"), sample_prompts=[])
    result = pretrain(cfg, on_batch=lambda step, batches: seen.append(batches))
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = seen[0][0]
    with torch.no_grad():
        logits = original(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    nats, count = token_loss_sum(logits, batch["labels"])
    assert result.losses[0] == pytest.approx(float(nats / count), rel=1e-5)
    assert AutoModelForCausalLM.from_pretrained(result.final_dir).config.model_type == "recipe_gpt"


def test_muon_takes_the_block_matrices_and_adamw_the_rest(tiny_tokenizer_dir):
    from conftest import make_tiny_config
    from transformers import AutoModelForCausalLM

    from llm_recipes.training.arguments import PretrainConfig
    from llm_recipes.training.building import MuonWithAdamW, make_optimizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_tiny_config())
    cfg = PretrainConfig(output_dir="unused", optim="muon", learning_rate=1e-2)
    optimizer = make_optimizer(model, cfg)
    assert isinstance(optimizer, MuonWithAdamW)
    in_muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = p.dim() == 2 and "embed" not in name and "lm_head" not in name
        assert (id(p) in in_muon) == expected, name
    # the loop sets the learning rate on the wrapper's groups: it must reach both inner optimizers
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    assert all(g["lr"] == 1e-3 for g in optimizer.muon.param_groups + optimizer.adamw.param_groups)
    # a state round trip keeps that link, and an AdamW state is refused with a message
    optimizer.load_state_dict(optimizer.state_dict())
    optimizer.param_groups[0]["lr"] = 5e-4
    assert optimizer.muon.param_groups[0]["lr"] == 5e-4
    with pytest.raises(ValueError, match="different `optim`"):
        optimizer.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())
    # and it learns: a fixed batch's loss falls (at the configured learning rate again)
    for group in optimizer.param_groups:
        group["lr"] = cfg.learning_rate
    batch = torch.randint(0, 512, (4, 32))
    losses = []
    for _ in range(10):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


def test_unknown_optimizer_is_a_clear_error():
    from llm_recipes.config import ConfigError
    from llm_recipes.training.arguments import PretrainConfig

    with pytest.raises(ConfigError, match="optim must be one of adamw, muon, got 'sgd'"):
        PretrainConfig(output_dir="unused", optim="sgd")


def test_schedules():
    from llm_recipes.training.schedule import learning_rate_at

    lr = lambda step, kind, **kw: learning_rate_at(step, 100, 1.0, 10, kind, min_lr_ratio=0.1, **kw)  # noqa: E731
    assert lr(0, "cosine") == pytest.approx(0.1) and lr(9, "cosine") == pytest.approx(1.0)
    assert lr(10, "cosine") == pytest.approx(1.0) and lr(100, "cosine") == pytest.approx(0.1)
    assert lr(55, "cosine") == pytest.approx(0.55)  # half way down the half cosine
    assert lr(50, "wsd") == 1.0 and lr(80, "wsd") == pytest.approx(1.0) and lr(90, "wsd") == pytest.approx(0.55)
    assert lr(100, "wsd") == pytest.approx(0.1)
    assert lr(50, "cosine", progress=1.0) == pytest.approx(0.1)  # a wall-clock budget decays on elapsed time
    assert lr(50, "constant") == 1.0


def test_token_byte_lengths_count_utf8_bytes(tiny_tokenizer):
    from llm_recipes.training.evaluation import token_byte_lengths

    lengths = token_byte_lengths(tiny_tokenizer, 512)
    text = "Über naïve café: x = 1"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    assert lengths[tiny_tokenizer.bos_token_id] == 0


def test_outlier_guard():
    from llm_recipes.training.monitor import OutlierGuard

    guard = OutlierGuard(zscore=5.0, window=128, min_history=32)
    for i in range(40):
        assert guard.check(3.0, 1.0 + 0.01 * (i % 5)) is None
    assert "outlier" in guard.check(3.0, 50.0)
    assert "non-finite" in guard.check(float("nan"), 1.0)
    assert guard.check(3.0, 1.02) is None
    restored = OutlierGuard(zscore=5.0)
    restored.load_state_dict(guard.state_dict())
    assert list(restored.history) == list(guard.history)


def test_outlier_guard_follows_a_lasting_rise_of_the_norm():
    """A norm that rises and stays up (as while the learning rate warms up) is skipped for a step or two, then
    taken: skipped norms join the window too. Remembering only taken ones skipped every later step."""
    from llm_recipes.training.monitor import OutlierGuard

    guard = OutlierGuard(zscore=6.0, window=128, min_history=32)
    for i in range(40):
        assert guard.check(3.0, 1.0 + 0.01 * (i % 5)) is None
    skipped = [guard.check(3.0, 5.0 + 0.1 * (i % 3)) is not None for i in range(200)]
    assert skipped[0] and sum(skipped) <= 3 and not any(skipped[10:])


def test_skipped_updates_warning_names_the_share():
    from llm_recipes.training.monitor import skipped_updates_warning

    assert skipped_updates_warning(9, 2225) is None  # a few outliers: the guard doing its job
    assert skipped_updates_warning(0, 0) is None
    message = skipped_updates_warning(2259, 2313)
    assert "2,259 of 2,313 updates (98%) were skipped" in message and "outlier_zscore" in message


def test_a_run_that_skipped_many_updates_says_so(tmp_path, clean_dir, tokens_dir, tiny_tokenizer_dir, monkeypatch,
                                                 capsys):
    """The guard's decisions are forced here (every other step an outlier) to check what the loop reports: the
    warning in its output, train_summary.json, the model card and the report card."""
    from llm_recipes.pipeline.report_card import write_report_card
    from llm_recipes.training import monitor
    from llm_recipes.training.loop import pretrain

    calls = []

    def every_other_step(self, loss, grad_norm):
        calls.append(grad_norm)
        return "gradient norm is an outlier (forced by the test)" if len(calls) % 2 == 0 else None

    monkeypatch.setattr(monitor.OutlierGuard, "check", every_other_step)
    pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=6, tokenized_path=str(tokens_dir)))
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["skipped_steps"] == 3
    assert "3 of 6 updates (50%) were skipped" in summary["skipped_warning"]
    assert "pretrain: warning: 3 of 6 updates" in capsys.readouterr().out
    skipped_rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
                    if "skipped" in line]
    assert [row["step"] for row in skipped_rows] == [2, 4, 6]
    assert "**updates skipped**: 3 of 6 updates (50%)" in (tmp_path / "final" / "README.md").read_text()

    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    for name in ("train_summary.json", "metrics.jsonl"):
        (run / "pretrain" / name).write_text((tmp_path / name).read_text())
    (run / "run_summary.json").write_text(json.dumps({"stages": {"pretrain": {"seconds": 1.0}}}))
    card = write_report_card(run, samples=False).read_text()
    assert "**Updates skipped**: in pretraining 3 of 6 updates (50%) were skipped" in card


@pytest.mark.parametrize("recipe", ["quickstart", "debug"])
def test_recipe_parses(recipe):
    from conftest import REPO_ROOT

    from llm_recipes.config import parse_config
    from llm_recipes.training import PretrainConfig

    (cfg,) = parse_config([PretrainConfig], ["--config", str(REPO_ROOT / "recipes" / recipe / "pretrain.yaml")],
                          stage="pretrain")
    assert cfg.output_dir.endswith("/pretrain") and cfg.dataset_path.endswith("/clean")


def test_muon_without_torch_muon_is_a_clear_error(monkeypatch):
    from conftest import make_tiny_config
    from transformers import AutoModelForCausalLM

    from llm_recipes.config import ConfigError
    from llm_recipes.training.arguments import PretrainConfig
    from llm_recipes.training.building import make_optimizer

    monkeypatch.delattr(torch.optim, "Muon", raising=False)  # as on a torch from before torch.optim.Muon
    model = AutoModelForCausalLM.from_config(make_tiny_config())
    with pytest.raises(ConfigError, match=r"optim: muon needs torch.optim.Muon, which this torch .* does not have"):
        make_optimizer(model, PretrainConfig(output_dir="unused", optim="muon"))

"""The compute-budget dial (llm_recipes/training/sizing.py): its arithmetic matches the real model, and its plans are
monotone in the budget, fit in memory, keep explicit settings and refuse a budget too small for any model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pretrain_helpers import one_torch_thread, tiny_config, write_clean_dataset  # noqa: F401 (autouse fixture)

REPO = Path(__file__).resolve().parents[1]
# Chinchilla's fit (Hoffmann et al. 2022, approach 3): a law independent of the one this repo measured
CHINCHILLA = dict(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)
BUDGETS = [30, 60, 120, 240, 360, 600, 1200, 3600, 7200, 36000]


def _throughput(rate=1.2e11, overhead=0.02):
    from llm_recipes.training.sizing import Throughput

    return Throughput(overhead, rate, "cpu", True, "synthetic")


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_parameters_and_flops_match_the_model(depth):
    from llm_recipes.model import config_from_preset
    from llm_recipes.model.modeling_recipe_gpt import RecipeGPTForCausalLM
    from llm_recipes.training.sizing import flops_per_token, parameter_count, shape_for_depth

    shape = shape_for_depth(depth)
    model = RecipeGPTForCausalLM(config_from_preset("micro", vocab_size=512, max_position_embeddings=64, **shape))
    assert parameter_count(shape, 512) == sum(p.numel() for p in model.parameters())
    assert flops_per_token(shape, 512, 64) == model.flops_per_token(64)


def test_depth_four_is_the_hand_tuned_quickstart_shape():
    from llm_recipes.training.sizing import seq_len_for_depth, shape_for_depth

    assert shape_for_depth(4) == {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
                                  "num_key_value_heads": 4, "intermediate_size": 704}
    assert seq_len_for_depth(4) == 128 and seq_len_for_depth(24) == 1024


@pytest.mark.parametrize("law_name", ["chinchilla", "cpu_fit"])
@pytest.mark.parametrize("unique", [None, 6e6])
def test_plans_are_monotone_in_the_budget(law_name, unique):
    """More seconds never give a smaller model, less compute, a smaller batch or a higher learning rate (tokens can
    fall where the depth steps up: a bigger model reads fewer tokens in the same time)."""
    from llm_recipes.training.sizing import CPU_FIT, ScalingLaw, flops_per_token, plan_run

    law = ScalingLaw(**CHINCHILLA) if law_name == "chinchilla" else CPU_FIT
    # a GPU-like device, a CPU whose small models are cheap, and the 2-core CPU with its large per-step overhead
    for throughput in (_throughput(4e14, 0.02), _throughput(1.2e11, 0.02), _throughput(2.86e11, 0.242)):
        plans = [plan_run(b, 4096, throughput, 64 * 2**30, unique_tokens=unique, law=law) for b in BUDGETS]
        for small, big in zip(plans, plans[1:]):
            assert big.parameters >= small.parameters
            assert big.planned_tokens * flops_per_token(big.shape, 4096, big.seq_len) >= \
                small.planned_tokens * flops_per_token(small.shape, 4096, small.seq_len)  # compute used
            assert big.tokens_per_step >= small.tokens_per_step
            assert big.learning_rate <= small.learning_rate
        assert plans[-1].parameters > plans[0].parameters  # the dial does turn


def test_the_quickstart_budget_on_the_quickstart_machine_gives_the_tuned_batch_and_rate():
    """At the anchor's compute the batch and learning-rate rules return the hand-tuned 2,048 tokens and 3e-3."""
    from llm_recipes.training.sizing import ANCHOR_COMPUTE, plan_run

    rate = ANCHOR_COMPUTE / 360
    plan = plan_run(360, 4096, _throughput(rate=rate, overhead=0.0), 64 * 2**30, fixed={"seq_len": 128})
    assert plan.tokens_per_step == 2048 and plan.learning_rate == pytest.approx(3e-3)


def test_a_fast_device_with_a_small_corpus_gets_a_bigger_model_not_endless_epochs():
    from llm_recipes.training.sizing import ScalingLaw, plan_run

    fast, law = _throughput(rate=3e14, overhead=0.01), ScalingLaw(**CHINCHILLA)
    limited = plan_run(360, 4096, fast, 80 * 2**30, unique_tokens=6e6, law=law)
    unlimited = plan_run(360, 4096, fast, 80 * 2**30, unique_tokens=None, law=law)
    assert limited.parameters > unlimited.parameters
    assert limited.planned_tokens < unlimited.planned_tokens


def test_plans_fit_in_memory():
    from llm_recipes.training.sizing import MEMORY_HEADROOM, ScalingLaw, plan_run

    fast, law = _throughput(rate=3e14, overhead=0.01), ScalingLaw(**CHINCHILLA)
    roomy = plan_run(3600, 4096, fast, 80 * 2**30, bf16=True, law=law)
    for limit in (80 * 2**30, 4 * 2**30, 2**30, 2**28):
        plan = plan_run(3600, 4096, fast, limit, bf16=True, law=law)
        assert plan.memory_bytes <= limit * MEMORY_HEADROOM
    assert plan.parameters < roomy.parameters  # 256 MiB: a model a fraction of the roomy one
    # a tight limit halves the micro-batch and accumulates instead: the same tokens per step for that model
    tight = plan_run(3600, 4096, fast, 4 * 2**30, bf16=True, law=law, fixed={"depth": roomy.depth})
    assert tight.per_device_train_batch_size < roomy.per_device_train_batch_size
    assert tight.tokens_per_step == roomy.tokens_per_step


def test_explicit_settings_win():
    from llm_recipes.training.sizing import plan_run

    fixed = {"depth": 3, "seq_len": 64, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
             "learning_rate": 1e-3, "warmup_steps": 7}
    plan = plan_run(600, 4096, _throughput(), 64 * 2**30, fixed=fixed)
    assert (plan.depth, plan.seq_len, plan.per_device_train_batch_size, plan.gradient_accumulation_steps,
            plan.learning_rate, plan.warmup_steps) == (3, 64, 4, 2, 1e-3, 7)
    assert plan.tokens_per_step == 4 * 2 * 64
    assert sorted(plan.explicit) == sorted(fixed)
    shape = {"num_hidden_layers": 2, "hidden_size": 96, "num_attention_heads": 3, "intermediate_size": 256}
    assert plan_run(600, 4096, _throughput(), 64 * 2**30, fixed={"shape": shape}).shape == shape


def test_a_budget_too_small_for_any_model_is_a_clear_error():
    from llm_recipes.training.sizing import MIN_STEPS, BudgetError, plan_run

    with pytest.raises(BudgetError) as e:
        plan_run(0.5, 4096, _throughput(), 64 * 2**30)
    message = str(e.value)
    assert "compute_budget_seconds 0.5 is too small" in message and f"{MIN_STEPS} steps" in message
    minimum = int(message.rsplit("raise compute_budget_seconds to ", 1)[1].split()[0])
    assert plan_run(minimum, 4096, _throughput(), 64 * 2**30).planned_steps >= MIN_STEPS  # the named minimum works
    with pytest.raises(BudgetError, match="no model fits in memory"):
        plan_run(600, 4096, _throughput(), 2**20)


def test_effective_tokens_discount_repeats_only():
    from llm_recipes.training.sizing import REPEAT_HALF_LIFE, effective_tokens

    assert effective_tokens(5e6, 6e6) == 5e6 and effective_tokens(5e6, None) == 5e6
    values = [effective_tokens(d, 1e6) for d in (1e6, 2e6, 4e6, 1e8, 1e10)]
    assert values == sorted(values) and values[1] < 2e6
    assert values[-1] == pytest.approx(1e6 * (1 + REPEAT_HALF_LIFE), rel=1e-3)  # the ceiling


def test_throughput_from_two_probes_recovers_overhead_and_rate():
    from llm_recipes.training.sizing import throughput_from_probes

    points = [{"depth": d, "flops_per_step": f, "step_s": 0.05 + f / 2e11} for d, f in ((1, 4e9), (4, 5.6e10))]
    t = throughput_from_probes(points, "cpu")
    assert t.overhead_s == pytest.approx(0.05) and t.flops_per_s == pytest.approx(2e11)


def test_fit_recovers_a_known_law():
    from llm_recipes.training.sizing import ScalingLaw, fit_scaling_law

    truth = ScalingLaw(E=1.5, A=40.0, alpha=0.3, B=60.0, beta=0.35)
    runs = [(n, d) for n in (3e5, 1e6, 2e6, 4e6, 8e6) for d in (2e5, 8e5, 3e6)]
    law = fit_scaling_law([n for n, _ in runs], [d for _, d in runs], [truth.loss(n, d) for n, d in runs])
    assert (law.alpha, law.beta) == (0.3, 0.35)
    assert (law.E, law.A, law.B) == pytest.approx((1.5, 40.0, 60.0), rel=1e-6)


def test_cpu_fit_is_the_fit_of_the_stored_sweep():
    """sizing.CPU_FIT is not typed in by hand: it is the fit of benchmarks/pretrain/scaling_runs.jsonl."""
    from llm_recipes.training.sizing import CHINCHILLA_EXPONENTS, CPU_FIT, fit_scaling_law

    rows = [json.loads(line) for line in (REPO / "benchmarks/pretrain/scaling_runs.jsonl").read_text().splitlines()
            if line.strip()]
    law = fit_scaling_law([r["parameters"] for r in rows], [r["tokens"] for r in rows], [r["val_loss"] for r in rows],
                          alphas=[CHINCHILLA_EXPONENTS[0]], betas=[CHINCHILLA_EXPONENTS[1]])
    stored = json.loads((REPO / "benchmarks/pretrain/scaling_fit.json").read_text())
    for key, value in law.as_dict().items():
        assert getattr(CPU_FIT, key) == pytest.approx(value, rel=1e-3)
        assert stored[key] == pytest.approx(value, rel=1e-3)


def test_config_without_the_dial_keeps_the_old_defaults_and_depth_builds_the_family(tmp_path):
    from llm_recipes.config import ConfigError
    from llm_recipes.training import PretrainConfig

    cfg = PretrainConfig(output_dir=str(tmp_path))
    assert (cfg.model_preset, cfg.seq_len, cfg.per_device_train_batch_size, cfg.learning_rate, cfg.max_steps) == \
        ("micro", 256, 8, 6e-4, 1000)
    dial = PretrainConfig(output_dir=str(tmp_path), compute_budget_seconds=60, seq_len=64)
    assert dial.model_preset is None and dial.learning_rate is None and dial.seq_len == 64
    with pytest.raises(ConfigError, match="compute_budget_seconds must be positive"):
        PretrainConfig(output_dir=str(tmp_path), compute_budget_seconds=0)
    with pytest.raises(ConfigError, match="model_depth or model_preset"):
        PretrainConfig(output_dir=str(tmp_path), model_depth=2, model_preset="test")


def test_pretrain_with_the_dial_records_its_plan_and_keeps_explicit_keys(tmp_path, tiny_tokenizer_dir):
    """A real (tiny) run: the probe times this CPU, the plan fills what the recipe left open, and the choice is
    in sizing.json, run_info.json, resolved_config.yaml and train_summary.json."""
    import yaml

    from llm_recipes.training.loop import pretrain

    clean = write_clean_dataset(tmp_path / "clean")
    cfg = tiny_config(tmp_path / "out", clean, tiny_tokenizer_dir, compute_budget_seconds=4, model_preset=None,
                      model_overrides=None, per_device_train_batch_size=None, learning_rate=None,
                      warmup_steps=None, max_steps=None, seq_len=32, eval_max_batches=1)
    pretrain(cfg)
    out = tmp_path / "out"
    plan = json.loads((out / "sizing.json").read_text())["plan"]
    assert plan["seq_len"] == 32 and plan["explicit"] == ["seq_len"] and plan["throughput"]["measured"]
    assert json.loads((out / "run_info.json").read_text())["sizing"] == plan
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["model_depth"] == plan["depth"] and resolved["learning_rate"] == plan["learning_rate"]
    assert resolved["max_train_seconds"] == 4 and resolved["per_device_train_batch_size"] == \
        plan["per_device_train_batch_size"]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["sizing"]["planned_tokens"] == plan["planned_tokens"]
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["num_hidden_layers"] == plan["depth"] and config["hidden_size"] == 64 * plan["depth"]


def test_pretrain_refuses_a_budget_too_small(tmp_path, tiny_tokenizer_dir):
    from llm_recipes.training.loop import pretrain
    from llm_recipes.training.sizing import BudgetError

    clean = write_clean_dataset(tmp_path / "clean")
    cfg = tiny_config(tmp_path / "out", clean, tiny_tokenizer_dir, compute_budget_seconds=0.01, model_preset=None,
                      model_overrides=None, learning_rate=None, max_steps=None)
    with pytest.raises(BudgetError, match=r"compute_budget_seconds 0.01 is too small .* raise compute_budget_seconds"):
        pretrain(cfg)
    assert not (tmp_path / "out" / "resolved_config.yaml").exists()  # refused before the stage started


def test_shortfall_names_the_plan():
    from llm_recipes.training.sizing import shortfall

    assert shortfall(900, 1000) is None
    message = shortfall(300, 1000)
    assert "300 tokens, 30% of the 1,000 planned" in message
    assert shortfall(300, None) is None  # no plan (no dial): nothing to compare with


@pytest.mark.parametrize("trained", [300_000, 950_000])
def test_report_card_says_when_pretraining_got_far_fewer_tokens_than_planned(tmp_path, trained):
    from llm_recipes.pipeline.report_card import write_report_card
    from llm_recipes.training.sizing import shortfall

    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    (pretrain / "metrics.jsonl").write_text(json.dumps({"step": 10, "tokens": trained, "loss": 5.0}) + "\n")
    summary = {"steps": 10, "tokens": trained, "sizing": {"parameters": 2_114_880, "depth": 3,
                                                          "planned_tokens": 1_000_000, "planned_steps": 500,
                                                          "shortfall": shortfall(trained, 1_000_000)}}
    (pretrain / "train_summary.json").write_text(json.dumps(summary))
    (tmp_path / "run_summary.json").write_text(json.dumps({"stages": {"pretrain": {"seconds": 1.0}}}))
    card = write_report_card(tmp_path, samples=False).read_text()
    assert "Sized by the compute-budget dial: 2.11M parameters (depth 3), 1,000,000 tokens planned" in card
    warning = "**Fewer tokens than planned**: pretraining trained 300,000 tokens, 30% of the 1,000,000 planned"
    assert (warning in card) == (trained == 300_000)


def test_dial_plan_script_prints_the_plan_for_an_assumed_device_and_for_this_cpu(capsys):
    """benchmarks/pretrain/dial_plan.py: the printout behind the GPU figure in benchmarks/README.md, and its probe
    path (the one gpu_sizing.sh runs on a GPU) here on the CPU."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dial_plan", REPO / "benchmarks/pretrain/dial_plan.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--budget", "60", "360", "--flops_per_s", "4e14", "--overhead_s", "0.02", "--memory_gb", "130",
                        "--bf16", "--device", "cpu"]) == 0
    short, long = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert long["plan"]["parameters"] >= short["plan"]["parameters"] > 1e6
    assert long["plan"]["throughput"]["note"] == "assumed (--flops_per_s)"
    assert script.main(["--budget", "30", "--device", "cpu", "--memory_gb", "4"]) == 0
    probed = json.loads(capsys.readouterr().out)
    assert probed["plan"]["throughput"]["measured"] and probed["plan"]["throughput"]["probes"]

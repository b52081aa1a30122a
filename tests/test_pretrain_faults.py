"""Faults and bad input: NaN skip, killed process, corrupt/partial checkpoints, inputs that cannot work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from pretrain_helpers import one_torch_thread, tiny_config, write_clean_dataset  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    return write_clean_dataset(tmp_path_factory.mktemp("clean"))


def test_nan_loss_skips_the_update_and_is_logged(tmp_path, clean_dir, tiny_tokenizer_dir):
    from conftest import make_tiny_config
    from transformers import AutoTokenizer

    import llm_recipes  # noqa: F401
    from llm_recipes.model import RecipeGPTForCausalLM
    from llm_recipes.training.loop import pretrain
    from llm_recipes.training.monitor import read_metrics

    torch.manual_seed(0)
    model = RecipeGPTForCausalLM(make_tiny_config(len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))))
    calls = {"n": 0}

    def poison(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 3 and module.training:  # the third training forward returns NaN logits
            return output * float("nan")
        return output

    model.lm_head.register_forward_hook(poison)
    result = pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=5, sample_prompts=[]),
                      model=model)
    assert result.skipped_steps == 1
    assert not torch.isfinite(torch.tensor(result.losses[2])) and all(map(lambda x: x == x, result.losses[3:]))
    skipped = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "skipped" in r]
    assert [r["step"] for r in skipped] == [3] and "non-finite" in skipped[0]["skipped"] and skipped[0]["loss"] is None
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN update was not applied


def test_gradient_norm_outlier_skips_the_update_and_is_logged(tmp_path, clean_dir, tiny_tokenizer_dir):
    """After the guard's 32 steps of history, one step whose gradient is blown up 10,000x is skipped
    (its norm is a z-score outlier), logged with the reason, and training carries on."""
    from conftest import make_tiny_config
    from transformers import AutoTokenizer

    import llm_recipes  # noqa: F401
    from llm_recipes.model import RecipeGPTForCausalLM
    from llm_recipes.training.loop import pretrain
    from llm_recipes.training.monitor import read_metrics

    torch.manual_seed(0)
    model = RecipeGPTForCausalLM(make_tiny_config(len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))))
    backward_calls = {"n": 0}

    def blow_up(grad):
        backward_calls["n"] += 1
        return grad * 1e4 if backward_calls["n"] == 36 else grad

    model.model.embed_tokens.weight.register_hook(blow_up)
    result = pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=38, warmup_steps=2,
                                  sample_prompts=[], eval_max_batches=1), model=model)
    assert result.skipped_steps == 1
    skipped = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "skipped" in r]
    assert [r["step"] for r in skipped] == [36] and "outlier" in skipped[0]["skipped"]
    assert skipped[0]["grad_norm"] > 100 * max(r["grad_norm"] for r in read_metrics(tmp_path / "metrics.jsonl")
                                                  if "loss" in r and "skipped" not in r)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _checkpointed_run(tmp_path, clean_dir, tokenizer_dir, **kw):
    from llm_recipes.training.loop import pretrain

    cfg = tiny_config(tmp_path, clean_dir, tokenizer_dir, max_steps=4, save_steps=2, save_total_limit=3,
                      sample_prompts=[], **kw)
    pretrain(cfg)
    return tmp_path / "checkpoints"


def test_corrupt_and_partial_checkpoints(tmp_path, clean_dir, tiny_tokenizer_dir):
    from llm_recipes.training.checkpoint import CheckpointError, find_latest, verify_checkpoint
    from llm_recipes.training.loop import pretrain

    root = _checkpointed_run(tmp_path, clean_dir, tiny_tokenizer_dir)
    step2, step4 = root / "step-00000002", root / "step-00000004"
    verify_checkpoint(step4)
    # flip bytes in the newest checkpoint's weights: detected, and `latest` falls back
    weights = step4 / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(16)
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt.*model.safetensors"):
        verify_checkpoint(step4)
    warnings = []
    assert find_latest(root, warn=warnings.append) == step2 and "corrupt" in warnings[0]
    # a checkpoint without its manifest (killed while saving) is partial
    (step2 / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        verify_checkpoint(step2)
    # truncation is caught by size before hashing
    (root / "step-00000004" / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="corrupt"):
        verify_checkpoint(step4)
    # an explicit request for a broken checkpoint is an error, not a silent fallback
    with pytest.raises(CheckpointError, match="corrupt"):
        pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=6, resume_from_checkpoint=str(step4)))
    assert find_latest(root, warn=lambda m: None) is None


def test_latest_resumes_from_last_complete_checkpoint(tmp_path, clean_dir, tiny_tokenizer_dir):
    from llm_recipes.training.loop import pretrain

    root = _checkpointed_run(tmp_path, clean_dir, tiny_tokenizer_dir)
    (root / "step-00000004" / "checkpoint.json").unlink()  # as if killed while writing step 4
    (root / ".step-00000006.tmp").mkdir()  # the temp folder of a save that never finished
    result = pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=5, save_steps=2,
                                  resume_from_checkpoint="latest", sample_prompts=[]))
    assert len(result.losses) == 3  # steps 3, 4, 5 after the complete step-2 checkpoint


def test_killed_process_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path, clean_dir, tiny_tokenizer_dir):
    """A real `python -m llm_recipes.pretrain` killed with SIGKILL mid-run, then resumed with `latest`."""
    from llm_recipes.training.checkpoint import find_latest, list_checkpoints
    from llm_recipes.training.monitor import read_metrics

    out = tmp_path / "out"
    args = [sys.executable, "-m", "llm_recipes.pretrain", "--output_dir", str(out), "--dataset_path", str(clean_dir),
            "--tokenizer_path", str(tiny_tokenizer_dir), "--model_preset", "test", "--seq_len", "64",
            "--per_device_train_batch_size", "4", "--max_steps", "10000", "--save_steps", "3", "--logging_steps", "1",
            "--eval_steps", "0", "--report_to", "none", "--data_mode", "shards", "--save_total_limit", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any(p.name >= "step-00000006"
                                                 for p in list_checkpoints(out / "checkpoints")):
            time.sleep(0.2)
        time.sleep(0.5)  # let it run on past the checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = find_latest(out / "checkpoints")
    assert last is not None, "no checkpoint was written within 120 s"
    reached = max(r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r)
    saved = int(last.name.split("-")[1])
    assert 0 <= reached - saved <= 3 + 1  # at most save_steps (+ the step being saved) lost
    # resume in this process (the same code path as the CLI, one interpreter start cheaper)
    from llm_recipes.training.loop import pretrain

    result = pretrain(tiny_config(out, clean_dir, tiny_tokenizer_dir, max_steps=saved + 2, save_steps=3,
                                  resume_from_checkpoint="latest", sample_prompts=[], model_overrides=None))
    assert result.last_checkpoint.name == f"step-{saved + 2:08d}" and len(result.losses) == 2
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, saved + 3))  # one consistent trajectory: killed steps after the checkpoint dropped
    assert (out / "stage_complete.json").is_file()


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_mode", ["shards", "stream"])
def test_dataset_shorter_than_one_sequence(tmp_path, tiny_tokenizer_dir, data_mode):
    from llm_recipes.training.data import DataError
    from llm_recipes.training.loop import pretrain

    clean = write_clean_dataset(tmp_path / "clean", ["a tiny document"], ["another tiny one"])
    with pytest.raises(DataError, match="seq_len"):
        pretrain(tiny_config(tmp_path / "out", clean, tiny_tokenizer_dir, data_mode=data_mode, eval_max_batches=2))


def test_missing_dataset_and_wrong_column(tmp_path, tiny_tokenizer_dir):
    from llm_recipes.training.data import DataError
    from llm_recipes.training.loop import pretrain

    with pytest.raises(DataError, match="train/\\*.parquet"):
        pretrain(tiny_config(tmp_path / "out", tmp_path / "nowhere", tiny_tokenizer_dir))
    clean = write_clean_dataset(tmp_path / "clean")
    with pytest.raises(DataError, match="no column 'body'"):
        pretrain(tiny_config(tmp_path / "out", clean, tiny_tokenizer_dir, text_column="body"))


def test_tokenizer_model_vocab_mismatch(tmp_path, clean_dir, tiny_tokenizer_dir, tiny_model_dir):
    from conftest import tiny_corpus

    from llm_recipes.config import ConfigError
    from llm_recipes.tokenizer.bpe import save_tokenizer, train_bpe
    from llm_recipes.training.loop import pretrain

    with pytest.raises(ConfigError, match="embedding has only 320 rows"):
        pretrain(tiny_config(tmp_path / "a", clean_dir, tiny_tokenizer_dir,
                             model_overrides={"vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
                                              "num_hidden_layers": 1, "num_attention_heads": 4}))
    bigger = save_tokenizer(train_bpe(tiny_corpus(), vocab_size=1024), tmp_path / "tok1024")
    with pytest.raises(ConfigError, match="1024 tokens but the model's embedding has only 512"):
        pretrain(tiny_config(tmp_path / "b", clean_dir, bigger, init_from=str(tiny_model_dir), model_overrides=None))


def test_bad_config_values_are_clear_cli_errors(tmp_path, capsys):
    from llm_recipes.cli import main

    assert main(["pretrain", "--output_dir", str(tmp_path), "--max_steps", "0"]) == 2
    assert "max_steps must be at least 1" in capsys.readouterr().err
    assert main(["pretrain", "--output_dir", str(tmp_path), "--lr_scheduler_type", "cosin"]) == 2
    assert "lr_scheduler_type must be one of" in capsys.readouterr().err
    assert main(["pretrain", "--output_dir", str(tmp_path), "--lerning_rate", "1"]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err


def test_existing_checkpoints_are_not_silently_restarted(tmp_path, clean_dir, tiny_tokenizer_dir):
    from llm_recipes.config import ConfigError
    from llm_recipes.training.loop import pretrain

    _checkpointed_run(tmp_path, clean_dir, tiny_tokenizer_dir)
    with pytest.raises(ConfigError, match="resume_from_checkpoint: latest"):
        pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, save_steps=2))
    result = pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=2, overwrite_output_dir=True,
                                  sample_prompts=[]))
    assert len(result.losses) == 2
    assert json.loads((tmp_path / "stage_complete.json").read_text())["steps"] == 2


def test_resume_with_a_different_model_is_a_clear_error(tmp_path, clean_dir, tiny_tokenizer_dir):
    from llm_recipes.training.checkpoint import CheckpointError
    from llm_recipes.training.loop import pretrain

    _checkpointed_run(tmp_path, clean_dir, tiny_tokenizer_dir)
    with pytest.raises(CheckpointError, match="model_shape"):
        pretrain(tiny_config(tmp_path, clean_dir, tiny_tokenizer_dir, max_steps=6, resume_from_checkpoint="latest",
                             model_overrides=None))

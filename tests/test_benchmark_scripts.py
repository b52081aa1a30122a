"""The pretraining benchmark scripts run end to end on a small text, so their flags and records stay working
(the benchmarks themselves, 3 minutes on Tiny Shakespeare and the GPU MFU run, are run by hand:
benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import tiny_corpus
from pretrain_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks" / "pretrain"


def load_script(name: str = "shakespeare"):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shakespeare_benchmark_records_a_run(tmp_path):
    text = tmp_path / "input.txt"
    text.write_text("\n\n".join(tiny_corpus()[:40]), encoding="utf-8")
    results = tmp_path / "results.jsonl"
    rc = load_script().main([
        "--input", str(text), "--work", str(tmp_path / "work"), "--results", str(results), "--vocab", "320",
        "--seq_len", "32", "--batch", "2", "--max_steps", "4", "--seed", "7", "--schedule", "linear",
        "--max_grad_norm", "0.5", "--weight_decay", "1.0", "--note", "test"])
    assert rc == 0
    record = json.loads(results.read_text().splitlines()[-1])
    assert record["steps"] == 4 and record["train_tokens"] == 4 * 2 * 32
    assert record["seed"] == 7 and record["max_grad_norm"] == 0.5 and record["schedule"] == "linear"
    # a real evaluation: bits per byte of an almost untrained model, near the uniform log2(320) / bytes per token
    assert 1.0 < record["val_bits_per_byte"] < 8.0 and 1.0 < record["val_bits_per_byte_sliding"] < 8.0
    metrics = [json.loads(line)
               for line in (tmp_path / "work" / "run-v320" / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in metrics if "lr" in m]  # the loop logged its steps there


def test_shakespeare_benchmark_names_a_missing_input(tmp_path, capsys):
    assert load_script().main(["--input", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt not found" in capsys.readouterr().err


def test_gpu_mfu_script_runs_its_code_path_on_the_cpu(tmp_path):
    """What a session with a GPU runs first (benchmarks/pretrain/gpu_device.sh): here with --cpu and a tiny
    preset, one record per batch size, MFU n/a without a GPU."""
    text = tmp_path / "input.txt"
    text.write_text("\n\n".join(tiny_corpus()[:40]), encoding="utf-8")
    results = tmp_path / "results.jsonl"
    rc = load_script("gpu_mfu").main([
        "--cpu", "--no-compile", "--preset", "test", "--seq_len", "32", "--batch", "2", "3", "--steps", "6",
        "--skip", "1", "--text", str(text), "--work", str(tmp_path / "work"), "--results", str(results)])
    assert rc == 0
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["batch"] for r in records] == [2, 3]
    for r in records:
        assert r["gpu"] == "cpu" and r["mfu_median"] is None and r["tokens_per_sec_median"] > 0
        assert r["benchmark"] == "gpu-mfu-test" and r["seq_len"] == 32


def test_gpu_mfu_script_refuses_without_a_gpu_or_a_text(tmp_path, capsys):
    import torch

    script = load_script("gpu_mfu")
    assert script.main(["--cpu", "--text", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt not found" in capsys.readouterr().err
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the no-GPU refusal cannot be shown")
    (tmp_path / "input.txt").write_text("some text", encoding="utf-8")
    assert script.main(["--text", str(tmp_path / "input.txt")]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err


def test_contention_benchmark_records_rows(tmp_path):
    out = tmp_path / "contention.jsonl"
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(BENCHMARKS / "contention.py"), "--steps", "1", "--hogs",
                           "0", "--threads", "auto", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["hogs"], r["threads"]) for r in rows] == [(0, "auto"), (0, "1")]
    assert rows[1]["threads_used"] == 1 and all(r["tokens_per_sec"] > 0 for r in rows)

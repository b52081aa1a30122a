"""The pretraining benchmark script runs end to end on a small text, so its flags and record stay working
(the benchmark itself, 3 minutes on Tiny Shakespeare, is run by hand: benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from conftest import tiny_corpus
from pretrain_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "pretrain" / "shakespeare.py"


def load_script():
    spec = importlib.util.spec_from_file_location("shakespeare_benchmark", SCRIPT)
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
    metrics = [json.loads(line) for line in (tmp_path / "work" / "run-v320" / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in metrics if "lr" in m]  # the loop logged its steps there


def test_shakespeare_benchmark_names_a_missing_input(tmp_path, capsys):
    assert load_script().main(["--input", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt not found" in capsys.readouterr().err

"""Two CPU processes (gloo, torchrun): disjoint data, and the same steps as one process at the same
global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain_helpers import launch_two_processes, train_and_record, write_clean_dataset, one_torch_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    return write_clean_dataset(tmp_path_factory.mktemp("clean"))


def _records(folder: Path, n: int) -> list[dict]:
    return [json.loads((folder / f"record_{r}.json").read_text()) for r in range(n)]


def test_two_processes_match_one_at_the_same_global_batch(tmp_path, clean_dir, tiny_tokenizer_dir):
    steps = 4
    launch_two_processes(tmp_path / "two", clean_dir, tiny_tokenizer_dir, "shards", 2, steps)
    train_and_record(str(tmp_path / "one"), str(clean_dir), str(tiny_tokenizer_dir), "shards", 4, steps)
    r0, r1 = _records(tmp_path / "two", 2)
    (single,) = _records(tmp_path / "one", 1)
    for step in map(str, range(steps)):
        # disjoint within a step, and together exactly the rows one process sees at batch 2 x 2
        assert not set(r0["seen"][step]) & set(r1["seen"][step])
        assert sorted(r0["seen"][step] + r1["seen"][step]) == sorted(single["seen"][step])
    # every rank reports the global loss (token-weighted over both processes)
    assert r0["losses"] == pytest.approx(r1["losses"], rel=1e-6)
    assert r0["losses"] == pytest.approx(single["losses"], rel=1e-4)
    assert r0["eval"]["val_tokens"] > single["eval"]["val_tokens"] / 2  # both ranks' validation rows counted
    ckpt = tmp_path / "two" / "checkpoints" / f"step-{steps:08d}"
    assert (ckpt / "data_state_0.pt").is_file() and (ckpt / "data_state_1.pt").is_file()
    assert (tmp_path / "two" / "final" / "model.safetensors").is_file()


def test_two_processes_stream_disjoint_documents(tmp_path, clean_dir, tiny_tokenizer_dir):
    """The stream shards itself across ranks (and the loader is not sharded a second time)."""
    launch_two_processes(tmp_path, clean_dir, tiny_tokenizer_dir, "stream", 2, 3)
    r0, r1 = _records(tmp_path, 2)
    rows0 = [k for rows in r0["seen"].values() for k in rows]
    rows1 = [k for rows in r1["seen"].values() for k in rows]
    assert len(rows0) == len(rows1) == 3 * 2
    assert not set(rows0) & set(rows1)


def test_launch_without_a_process_group_is_refused(tmp_path, clean_dir, tiny_tokenizer_dir):
    """torchrun on a machine without GPUs and without ACCELERATE_USE_CPU: Accelerate gives each process a
    single-process state. The stage must refuse instead of training twice into the same output_dir."""
    import os
    import subprocess
    import sys

    from pretrain_helpers import free_port

    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "llm_recipes.pretrain", "--output_dir", str(out),
           "--dataset_path", str(clean_dir), "--tokenizer_path", str(tiny_tokenizer_dir), "--model_preset", "test",
           "--max_steps", "2", "--report_to", "none"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0
    assert "launched as 2 processes (WORLD_SIZE=2) but they formed a group of 1" in done.stderr
    assert "ACCELERATE_USE_CPU=1" in done.stderr
    assert not (out / "checkpoints").exists() and not (out / "final").exists()


def test_process_group_check(monkeypatch):
    from llm_recipes.config import ConfigError
    from llm_recipes.launch import check_process_group

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_process_group(1, "sft")  # a plain single-process run
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_process_group(4, "sft")  # every process joined
    with pytest.raises(ConfigError, match=r"sft: launched as 4 processes .* group of 1"):
        check_process_group(1, "sft")

"""Two CPU processes (gloo, torchrun): disjoint data, and the same steps as one process at the same
global batch; `accelerate launch` with the repository's configs: DDP on CPU works, FSDP on CPU is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pretrain_helpers import launch_two_processes, one_torch_thread, train_and_record, write_clean_dataset  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parent.parent


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


def _accelerate_launch(config: str, out: Path, clean_dir, tokenizer_dir, use_cpu: bool):
    """`accelerate launch --config_file <config> --num_processes 2 -m llm_recipes.pretrain`, as a user runs it."""
    import os
    import subprocess
    import sys

    from pretrain_helpers import free_port

    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               **({"ACCELERATE_USE_CPU": "1"} if use_cpu else {}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config),
           "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "llm_recipes.pretrain",
           "--output_dir", str(out), "--dataset_path", str(clean_dir), "--tokenizer_path", str(tokenizer_dir),
           "--model_preset", "test", "--seq_len", "32", "--per_device_train_batch_size", "2", "--max_steps", "2",
           "--save_steps", "2", "--eval_steps", "0", "--report_to", "none"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_cpu_ddp_through_accelerate_launch(tmp_path, clean_dir, tiny_tokenizer_dir):
    """recipes/accelerate/README.md's CPU command: ACCELERATE_USE_CPU=1 with ddp.yaml forms one gloo group."""
    done = _accelerate_launch("recipes/accelerate/ddp.yaml", tmp_path, clean_dir, tiny_tokenizer_dir, use_cpu=True)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "checkpoints" / "step-00000002"
    assert (ckpt / "data_state_0.pt").is_file() and (ckpt / "data_state_1.pt").is_file()
    assert "2 steps, 256 tokens" in done.stdout  # 2 steps x 2 processes x 2 rows x 32 tokens


def test_launch_without_a_process_group_is_refused(tmp_path, clean_dir, tiny_tokenizer_dir):
    """The FSDP2 config on a machine without GPUs. Recent Accelerate (1.15) gives each process a single-process
    state: the stage must refuse instead of training twice into the same output_dir. Accelerate 1.10 falls back
    to DDP over gloo (MULTI_CPU, parameters not sharded), so the run is one run: both are right, two lone copies
    never are."""
    import accelerate
    from packaging.version import Version

    done = _accelerate_launch("recipes/accelerate/fsdp2.yaml", tmp_path, clean_dir, tiny_tokenizer_dir, use_cpu=False)
    if done.returncode == 0 and Version(accelerate.__version__) < Version("1.15"):
        assert "2 steps, 256 tokens" in done.stdout  # 2 steps x 2 processes x 2 rows x 32 tokens: one group
        return
    assert done.returncode != 0, done.stdout[-2000:]
    assert "launched as 2 processes (WORLD_SIZE=2) but they formed a group of 1" in done.stderr
    assert "ACCELERATE_USE_CPU=1" in done.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "final").exists()


def test_process_group_check(monkeypatch):
    from llm_recipes.config import ConfigError
    from llm_recipes.training.processes import check_process_group

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_process_group(1, "sft")  # a plain single-process run
    monkeypatch.setenv("WORLD_SIZE", "4")
    check_process_group(4, "sft")  # every process joined
    with pytest.raises(ConfigError, match=r"sft: launched as 4 processes .* group of 1"):
        check_process_group(1, "sft")

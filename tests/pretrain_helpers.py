"""Small real inputs for the pretraining tests: a clean-dataset folder and a tiny config."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_corpus


def write_clean_dataset(folder: Path, texts: list[str] | None = None, validation: list[str] | None = None) -> Path:
    """A folder laid out like the `clean` stage's output: train/ and validation/ parquet with `text`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if texts is None:
        corpus = tiny_corpus()
        texts, validation = corpus[8:], corpus[:8]
    for split, rows in (("train", texts), ("validation", validation if validation is not None else texts[:4])):
        (folder / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": rows}), folder / split / "part-00000.parquet")
    return folder


def tiny_config(output_dir, dataset_path, tokenizer_path, **overrides):
    """A PretrainConfig of the tiny conftest model size that trains in well under a second per step."""
    from llm_recipes.training import PretrainConfig

    kwargs = dict(output_dir=str(output_dir), dataset_path=str(dataset_path),
                  tokenizer_path=str(tokenizer_path) if tokenizer_path else None,
                  model_preset="test", seq_len=64, per_device_train_batch_size=4, max_steps=8, warmup_steps=2,
                  learning_rate=3e-3, logging_steps=1, eval_steps=0, eval_max_batches=2, save_steps=0,
                  report_to=["none"], sample_prompts=["The"], sample_max_new_tokens=4, data_mode="shards",
                  seed=0, model_overrides=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                               num_attention_heads=4, num_key_value_heads=2))
    kwargs.update(overrides)
    return PretrainConfig(**kwargs)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_and_record(output_dir: str, clean_dir: str, tokenizer_dir: str, data_mode: str, batch: int,
                     steps: int) -> None:
    """Trains and writes `record_<rank>.json`: the rows this process saw per step, losses, eval metrics."""
    import json
    import os

    from llm_recipes.training.loop import pretrain

    def key(row) -> str:
        return ",".join(map(str, row[:24].tolist()))

    seen: dict[int, list[str]] = {}
    cfg = tiny_config(output_dir, clean_dir, tokenizer_dir, max_steps=steps, per_device_train_batch_size=batch,
                      data_mode=data_mode, shuffle_buffer=0, sample_prompts=[], eval_max_batches=2, save_steps=steps)
    result = pretrain(cfg, on_batch=lambda step, batches: seen.__setitem__(step, [key(r) for b in batches
                                                                                   for r in b["input_ids"]]))
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun (the process group is gone after end_training)
    Path(output_dir, f"record_{rank}.json").write_text(
        json.dumps({"seen": seen, "losses": result.losses, "eval": result.eval_metrics}))


def launch_two_processes(*args) -> None:
    """`torchrun --nproc_per_node 2` of this file on CPU (gloo): fresh interpreters, unlike a fork of the
    test process, whose OpenMP thread pool can deadlock a forked child."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, *map(str, args)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as hung:  # say where it stopped, not only that it did
        raise AssertionError(f"torchrun still running after 240 s:\n{(hung.stderr or b'')[-4000:]!r}") from None
    if done.returncode != 0:
        raise AssertionError(f"torchrun failed ({done.returncode}):\n{done.stderr[-4000:]}")


if __name__ == "__main__":  # the torchrun worker of launch_two_processes
    import sys

    import torch

    torch.set_num_threads(1)
    out, clean, tok, mode, batch, steps = sys.argv[1:7]
    train_and_record(out, clean, tok, mode, int(batch), int(steps))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine two spinning OpenMP
    threads per process make every step several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

"""Two CPU processes (gloo, `accelerate.debug_launcher`): disjoint data, and the same steps as one
process at the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain_helpers import tiny_config, write_clean_dataset


def _row_keys(batches) -> list[str]:
    return [",".join(map(str, row[:24].tolist())) for b in batches for row in b["input_ids"]]


def _train_and_record(output_dir: str, clean_dir: str, tokenizer_dir: str, data_mode: str, batch: int, steps: int):
    """Runs in every launched process: trains and writes the rows this process saw plus the losses."""
    import torch
    import torch.distributed as dist

    from llm_recipes.training.loop import pretrain

    torch.set_num_threads(1)  # two processes on two cores
    # forked children inherit the parent's (single-process) Accelerate state singleton: start clean
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    seen: dict[int, list[str]] = {}
    cfg = tiny_config(output_dir, clean_dir, tokenizer_dir, max_steps=steps, per_device_train_batch_size=batch,
                      data_mode=data_mode, shuffle_buffer=0, sample_prompts=[], eval_max_batches=2, save_steps=steps)
    result = pretrain(cfg, on_batch=lambda step, batches: seen.__setitem__(step, _row_keys(batches)))
    rank = dist.get_rank() if dist.is_initialized() else 0
    Path(output_dir, f"record_{rank}.json").write_text(
        json.dumps({"seen": seen, "losses": result.losses, "eval": result.eval_metrics}))


def _launch(*args):
    from accelerate import debug_launcher

    debug_launcher(_train_and_record, args=args, num_processes=2)


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory):
    return write_clean_dataset(tmp_path_factory.mktemp("clean"))


def _records(folder: Path, n: int) -> list[dict]:
    return [json.loads((folder / f"record_{r}.json").read_text()) for r in range(n)]


def test_two_processes_match_one_at_the_same_global_batch(tmp_path, clean_dir, tiny_tokenizer_dir):
    steps = 4
    _launch(str(tmp_path / "two"), str(clean_dir), str(tiny_tokenizer_dir), "shards", 2, steps)
    _train_and_record(str(tmp_path / "one"), str(clean_dir), str(tiny_tokenizer_dir), "shards", 4, steps)
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
    _launch(str(tmp_path), str(clean_dir), str(tiny_tokenizer_dir), "stream", 2, 3)
    r0, r1 = _records(tmp_path, 2)
    rows0 = [k for rows in r0["seen"].values() for k in rows]
    rows1 = [k for rows in r1["seen"].values() for k in rows]
    assert len(rows0) == len(rows1) == 3 * 2
    assert not set(rows0) & set(rows1)

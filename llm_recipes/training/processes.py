"""The check that a multi-process launch (`accelerate launch`, torchrun) really formed one process group."""

from __future__ import annotations

import os

from ..config import ConfigError


def check_process_group(num_processes: int, stage: str) -> None:
    """Refuses a launch whose processes did not join one process group.

    torchrun and `accelerate launch` start WORLD_SIZE processes, but Accelerate forms a group only for the
    device types it knows: on a machine without GPUs a multi-GPU, FSDP or DeepSpeed config gives every
    process a single-process state. Each would then train the whole run alone and all of them would write
    the same output_dir at once.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and num_processes != world:
        raise ConfigError(
            f"{stage}: launched as {world} processes (WORLD_SIZE={world}) but they formed a group of "
            f"{num_processes}, so each would train alone and all would write the same output_dir. Without "
            "GPUs, set ACCELERATE_USE_CPU=1 to train on several CPU processes (DDP over gloo) with "
            "recipes/accelerate/ddp.yaml; FSDP and DeepSpeed ZeRO-3 shard over GPUs only (Accelerate does not "
            "shard on the CPU)")

"""Training checkpoints that are complete or absent, never half there.

A checkpoint is a folder `checkpoints/step-00001000/` holding Accelerate's state (model safetensors,
optimizer, RNG states of every process), `trainer_state.json` (step, tokens, elapsed time, outlier
history), `data_state_<rank>.pt` (where each process is in its data) and, written last,
`checkpoint.json`: a manifest with the size and SHA-256 of every file. It is written under a
temporary name and renamed into place, so a kill while saving leaves only a `.step-*.tmp` folder that
nothing reads. Loading checks the manifest: a missing manifest or a file whose size or hash differs is
reported as a partial or corrupt checkpoint, and `latest` falls back to the newest one that checks out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^step-(\d{8,})$")


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, partial or corrupt."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Checkpoint folders under root, oldest first (temporary folders of unfinished saves excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, step: int) -> None:
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": _sha256(p)} for p in _files(folder)}
    for p in _files(folder):
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    data = json.dumps({"step": step, "files": files}, indent=2, sort_keys=True) + "\n"
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(folder: str | os.PathLike) -> dict[str, Any]:
    """Checks a checkpoint against its manifest and returns the manifest.

    Raises:
        CheckpointError: naming the folder and what is wrong (missing, partial, corrupt).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {str(folder)!r} does not exist (expected a folder written by pretrain)")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"checkpoint {str(folder)!r} is partial: it has no {MANIFEST} (the process was probably stopped while saving)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {str(folder)!r} is corrupt: unreadable {MANIFEST} ({e})") from e
    for name, info in expected.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} is partial: file {name!r} is missing")
        size = path.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} is corrupt: {name!r} has {size} bytes, the manifest says {info['size']}")
        if _sha256(path) != info["sha256"]:
            raise CheckpointError(f"checkpoint {str(folder)!r} is corrupt: {name!r} does not match its SHA-256")
    if TRAINER_STATE not in expected:
        raise CheckpointError(f"checkpoint {str(folder)!r} is partial: it has no {TRAINER_STATE}")
    return manifest


def find_latest(root: str | os.PathLike, warn: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint under root that passes `verify_checkpoint`; broken newer ones are reported
    through `warn` and skipped. None when there is no usable checkpoint."""
    for folder in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(folder)
            return folder
        except CheckpointError as e:
            warn(f"skipping {e}")
    return None


def resolve_resume(resume: str | None, root: str | os.PathLike, warn: Callable[[str], None] = print) -> Path | None:
    """Turns `resume_from_checkpoint` into a verified folder: None (fresh start), 'latest' (newest
    complete under root, or None), or a path (which must be complete: an explicit request for a broken
    checkpoint is an error, not a silent fallback)."""
    if not resume:
        return None
    if resume == "latest":
        return find_latest(root, warn)
    verify_checkpoint(resume)
    return Path(resume)


def save_checkpoint(accelerator, root: str | os.PathLike, step: int, trainer_state: dict[str, Any],
                    data_state: Any, keep: int) -> Path:
    """Writes checkpoint `step` atomically from every process and keeps the newest `keep`.

    Every process must call this (Accelerate's save_state and the barriers are collective).
    """
    import torch

    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    torch.save(data_state, tmp / f"data_state_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / TRAINER_STATE, "w", encoding="utf-8") as f:
            json.dump(trainer_state, f, indent=2, sort_keys=True)
        write_manifest(tmp, step)  # last: its presence means every other file is complete
        if final.exists():  # the same step saved again after a resume: replace it
            old = root / f".{final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        for stale in list_checkpoints(root)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, folder: str | os.PathLike, expect: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], Any]:
    """Restores model, optimizer and RNG states from a verified checkpoint; returns (trainer_state,
    this process's data state). Every process must call this.

    Args:
        expect: trainer-state values this run must share with the checkpoint (model shape, seq_len, ...);
            a difference is a CheckpointError naming it, before anything is loaded.
    """
    import torch

    folder = Path(folder)
    trainer_state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    for key, value in (expect or {}).items():
        if key in trainer_state and trainer_state[key] != value:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} was written with {key}={trainer_state[key]!r}, this run has {value!r}: "
                f"resume with the same settings (model_preset / model_overrides / init_from, seq_len, data_mode, "
                f"batch size) or start a new output_dir")
    saved_world = trainer_state.get("world_size", 1)
    if saved_world != accelerator.num_processes:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} was written by {saved_world} processes, this run has "
            f"{accelerator.num_processes}: resume with the same number of processes")
    accelerator.load_state(str(folder))
    data_path = folder / f"data_state_{accelerator.process_index}.pt"
    data_state = torch.load(data_path, weights_only=False) if data_path.is_file() else None
    return trainer_state, data_state

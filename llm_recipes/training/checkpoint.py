"""Training checkpoints that are complete or absent, never half there.

A checkpoint is a folder `checkpoints/step-00001000/` holding Accelerate's state (model safetensors,
optimizer, RNG states of every process), `trainer_state.json` (step, tokens, elapsed time, outlier
history), `data_state_<rank>.pt` (where each process is in its data) and, written last,
`checkpoint.json`: a manifest with the size and SHA-256 of every file. It is written under a
temporary name and renamed into place, so a kill while saving leaves only a `.step-*.tmp` folder that
nothing reads. Loading checks the manifest: a missing manifest or a file whose size or hash differs is
reported as a partial or corrupt checkpoint, as is a `trainer_state.json` whose step is not the one in
the folder's name; `latest` falls back to the newest one that checks out, and retention keeps the newest
*valid* checkpoints, so a corrupt newer folder never costs a good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from .resume import resolve_resume as resume_from

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
            f"checkpoint {str(folder)!r} is partial: it has no {MANIFEST} "
            "(the process was probably stopped while saving)")
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
    named = _NAME.match(folder.name)
    if named:
        try:
            state_step = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))["step"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {str(folder)!r} is corrupt: unreadable {TRAINER_STATE} ({e})") from e
        for what, step in ((TRAINER_STATE, state_step), (MANIFEST, manifest.get("step"))):
            if step != int(named.group(1)):
                raise CheckpointError(f"checkpoint {str(folder)!r} is inconsistent: its {what} says step {step!r}, "
                                      f"its name says step {int(named.group(1))}")
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


def checkpoint_problem(folder: Path) -> str | None:
    """What makes a pretraining checkpoint unusable (`verify_checkpoint`'s finding), or None."""
    try:
        verify_checkpoint(folder)
    except CheckpointError as e:
        return str(e).removeprefix(f"checkpoint {str(folder)!r} ")
    return None


def resolve_resume(resume: str | None, root: str | os.PathLike, warn: Callable[[str], None] = print) -> Path | None:
    """Turns `resume_from_checkpoint` into a verified folder under root (`training.resume.resolve_resume`'s
    rules): None (fresh start), 'latest' (the newest complete checkpoint; None when root holds none), or a
    path, which must be complete.

    Raises:
        CheckpointError: a broken explicit checkpoint, or 'latest' when root holds checkpoints but none
            verifies; the message says how to start over on purpose.
    """
    return resume_from(resume, list_checkpoints(root), checkpoint_problem, where=str(root), error=CheckpointError,
                       warn=warn, start_over="repair or move them, point resume_from_checkpoint at a good copy, "
                                             "or set overwrite_output_dir: true to delete them and start over")


_verified: dict[Path, int] = {}  # checkpoints prune_checkpoints has verified, with their manifest's mtime


def prune_checkpoints(root: str | os.PathLike, keep: int, known_good: Path | None = None) -> list[Path]:
    """Deletes checkpoints beyond the newest `keep` that verify; returns what it deleted.

    Validity, not the name, decides: with a corrupt step-20 and a good step-12 written after resuming from
    step-10, `keep: 1` keeps step-12 (and leaves step-20, which a later save of step 20 replaces). A broken
    checkpoint older than a kept good one is deleted: nothing would ever resume from it.

    Args:
        known_good: a checkpoint this process has just written (not hashed again).
    """
    kept, deleted = 0, []
    for folder in reversed(list_checkpoints(root)):
        if kept >= keep:
            deleted.append(folder)
            continue
        try:
            manifest = folder / MANIFEST
            stamp = manifest.stat().st_mtime_ns if manifest.is_file() else None
            if folder != known_good and (stamp is None or _verified.get(folder) != stamp):
                verify_checkpoint(folder)  # hashed once per process, not at every save
                _verified[folder] = stamp
            kept += 1
        except CheckpointError:
            if kept:  # broken and older than a good one we keep
                deleted.append(folder)
    for folder in deleted:
        shutil.rmtree(folder, ignore_errors=True)
    return deleted


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
        prune_checkpoints(root, keep, known_good=final)
    accelerator.wait_for_everyone()
    return final


def check_resume(folder: str | os.PathLike, expect: dict[str, Any], num_processes: int) -> dict[str, Any]:
    """The checkpoint's trainer state, after checking that this run can continue it (before anything is
    loaded or any output is touched).

    Args:
        expect: trainer-state values this run must share with the checkpoint (model shape, context length,
            tokenizer fingerprint, seq_len, ...); a checkpoint written before a key existed is not checked on it.

    Raises:
        CheckpointError: naming the first setting that differs.
    """
    folder = Path(folder)
    trainer_state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    for key, value in expect.items():
        if key in trainer_state and trainer_state[key] != value:
            raise CheckpointError(
                f"checkpoint {str(folder)!r} was written with {key}={trainer_state[key]!r}, this run has {value!r}: "
                f"resume with the same settings (model_preset / model_overrides / init_from, tokenizer, seq_len, "
                f"data_mode, batch size) or start a new output_dir")
    saved_world = trainer_state.get("world_size", 1)
    if saved_world != num_processes:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} was written by {saved_world} processes, this run has "
            f"{num_processes}: resume with the same number of processes")
    return trainer_state


def tokenizer_fingerprint(tokenizer_path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a tokenizer folder's tokenizer.json (None without one): two tokenizers of the same size
    but different merges give different fingerprints, so a resume cannot silently switch between them."""
    path = Path(tokenizer_path) / "tokenizer.json" if tokenizer_path else None
    return _sha256(path) if path is not None and path.is_file() else None


def load_checkpoint(accelerator, folder: str | os.PathLike, expect: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any], Any]:
    """Restores model, optimizer and RNG states from a verified checkpoint; returns (trainer_state,
    this process's data state). Every process must call this.

    Args:
        expect: as for `check_resume` (checked again here, before anything is loaded).
    """
    import torch

    folder = Path(folder)
    trainer_state = check_resume(folder, expect or {}, accelerator.num_processes)
    accelerator.load_state(str(folder))
    data_path = folder / f"data_state_{accelerator.process_index}.pt"
    data_state = torch.load(data_path, weights_only=False) if data_path.is_file() else None
    return trainer_state, data_state

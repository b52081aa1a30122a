"""Artifacts are readable as files normally are: atomic writes go through mkstemp / mkdtemp (private 0600 /
0700) and transformers writes model.safetensors 0600 itself, yet a finished file must be 0644 and a folder
0755 under the usual umask 022, so that a vLLM or llama-server container running as another user can read
the export; a stricter umask (077) is respected."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


def _modes(root: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        modes[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return modes


@pytest.fixture
def umask():
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask,file_mode,folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_atomic_writes_leave_normal_modes(tmp_path, umask, mask, file_mode, folder_mode):
    from llm_recipes.fileio import atomic_directory, atomic_write_json, current_umask

    umask(mask)
    assert current_umask() == mask
    atomic_write_json(tmp_path / "info.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "info.json").stat().st_mode) == file_mode
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "data.txt").write_text("x")
        private = tmp / "private.bin"
        private.write_bytes(b"x")
        private.chmod(0o600)  # as transformers leaves model.safetensors
    modes = _modes(tmp_path / "folder")
    assert modes == {".": folder_mode, "sub": folder_mode, "sub/data.txt": file_mode, "private.bin": file_mode}


def test_saved_model_folder_and_exports_are_world_readable(tmp_path, umask, tiny_model_dir):
    from llm_recipes.cli import main

    umask(0o022)
    assert main(["export", str(tiny_model_dir), "--to", "llama", "--output_dir", str(tmp_path / "llama")]) == 0
    assert main(["export", str(tiny_model_dir), "--to", "gguf", "--output_dir", str(tmp_path / "gguf")]) == 0
    for folder in ("llama", "gguf"):
        modes = _modes(tmp_path / folder)
        assert modes["."] == 0o755, (folder, modes)
        assert all(mode in (0o644, 0o755) for mode in modes.values()), (folder, modes)
    assert _modes(tmp_path / "llama")["model.safetensors"] == 0o644

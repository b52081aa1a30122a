"""Crash-safe file writing and stage completion markers.

A stage that is killed must never leave a half-written artifact that looks finished: files are
written to a temporary name in the same folder and renamed into place (rename is atomic on one
filesystem), and a stage marks its output folder complete only as its very last act.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

COMPLETE_MARKER = "stage_complete.json"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask sets as it reads, which
    races with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_if_created_normally(path: str | os.PathLike, directory: bool) -> None:
    """mkstemp / mkdtemp create 0600 files and 0700 folders, private to their owner. An artifact is meant to be
    read by others (a vLLM or llama-server container running as another user): give it the mode `open` /
    `mkdir` would have given it, 0666 / 0777 less the umask (0644 / 0755 under the usual 022)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file opened at a temporary name beside `path`; when the block ends without an error it
    is fsynced and renamed onto `path`, otherwise removed. For writers that stream into a file object
    (`np.save`, `pyarrow.parquet.write_table`) without building the bytes in memory first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _as_if_created_normally(tmp, directory=False)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yields a temporary sibling folder; on success it replaces `path` in one rename. Files named in `keep`
    that the old `path` holds and the new folder does not are carried over (a stage's record of its run).

    On an exception the temporary folder is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _as_if_created_normally(tmp, directory=True)
        yield tmp
        for name in keep:
            if (path / name).is_file() and not (tmp / name).exists():
                shutil.copy2(path / name, tmp / name)
        readable = 0o444 & ~current_umask()  # r--r--r-- less the umask
        for root, folders, files in os.walk(tmp):
            for name in folders:  # and searchable, like a folder made by mkdir
                folder = os.path.join(root, name)
                os.chmod(folder, stat.S_IMODE(os.stat(folder).st_mode) | readable | (readable >> 2))
            for name in files:
                file = os.path.join(root, name)
                # some writers make private files of their own (transformers writes model.safetensors 0600):
                # add the read bits a normally created file has, keep everything else
                os.chmod(file, stat.S_IMODE(os.stat(file).st_mode) | readable)
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in `path`, or None when it is missing or not JSON (reports and summaries that may not exist)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def mark_complete(output_dir: str | os.PathLike, **info: Any) -> None:
    """Marks a stage's output folder as finished; `run` skips stages whose folder has this marker."""
    atomic_write_json(Path(output_dir) / COMPLETE_MARKER, {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})


def is_complete(output_dir: str | os.PathLike) -> bool:
    return (Path(output_dir) / COMPLETE_MARKER).is_file()


def clear_complete(output_dir: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path(output_dir) / COMPLETE_MARKER)


_TEMPORARY = re.compile(r"^\..+\.tmp$")  # .<name>.<random>.tmp, .step-00000100.tmp
_MOVED_ASIDE = re.compile(r"^\.(?P<name>.+)\.old(?:-\d+)?$")  # .<name>.old-<pid>, .step-00000100.old


def replace_folder(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Puts the finished folder `new` (on the same filesystem) where `target` is: the old `target` is moved
    aside to `.<name>.old-<pid>`, `new` renamed into place, the old one removed. A kill in between leaves the
    moved-aside copy, which `remove_leftovers` puts back at the next start."""
    new, target = Path(new), Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
    _fsync_dir(target.parent)


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Removes what killed atomic writes left directly in `folder`: the `.<name>.*.tmp` files and folders of
    `atomic_open` / `atomic_directory` (and checkpoint saves), and the `.<name>.old[-pid]` copies that a
    replacement moves aside (one whose `<name>` is missing, because the kill came between the two renames,
    is put back instead). Nothing reads these; a stage calls this when it starts writing into its folder.
    Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        moved = _MOVED_ASIDE.match(entry.name)
        if not moved and not _TEMPORARY.match(entry.name):
            continue
        if moved and not (folder / moved["name"]).exists():
            os.replace(entry, folder / moved["name"])
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed

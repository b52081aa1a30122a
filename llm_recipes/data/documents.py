"""Documents on disk: the column schema shared by gather and clean, and a crash-safe parquet shard writer.

Every document is a row `text, id, source, location, title, license` (all strings; empty where
unknown). A shard is written to a temporary name and renamed into place, so a shard that exists is
complete: a killed run keeps every finished shard and never leaves half a file behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..fileio import atomic_open

COLUMNS = ("text", "id", "source", "location", "title", "license")


def schema():
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in COLUMNS])


@dataclass
class Skipped:
    """An input that was not turned into a document, and why (reported, never silently dropped)."""

    reason: str
    location: str
    detail: str = ""


def write_parquet_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Writes rows (dicts with the COLUMNS keys) as one parquet file, atomically. Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    table = pa.Table.from_arrays([string_array([str(r.get(name) or "") for r in rows]) for name in COLUMNS],
                                 schema=schema())
    with atomic_open(path) as f:
        pq.write_table(table, f, compression="zstd")
    return len(rows)


def string_array(values: list[str]):
    """A pyarrow string array of `values` (no nulls), built from its UTF-8 bytes and offsets: the same array as
    `pa.array(values, pa.string())`, which first asks whether `values` is a pandas object and so imports pandas
    (~0.25-0.3 CPU s, in every process that writes a shard) though it is never used here."""
    import numpy as np
    import pyarrow as pa

    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    if offsets[-1] >= 2**31:  # more than a string array's 32-bit offsets hold
        return pa.array(values, pa.string())
    return pa.StringArray.from_buffers(len(encoded), pa.py_buffer(offsets.astype(np.int32)),
                                       pa.py_buffer(b"".join(encoded)))


@dataclass
class ShardWriter:
    """Buffers documents and writes `<prefix>-NNNNN.parquet` shards of about `shard_bytes` of text.

    Args:
        folder: where shards go.
        prefix: file name prefix (one per source in gather, one per task in clean).
        shard_bytes: UTF-8 bytes of text per shard; small shards spread clean's work over all cores.
        first_index: number of the next shard (a resumed run continues the numbering).
    """

    folder: Path
    prefix: str
    shard_bytes: int = 4 << 20
    first_index: int = 0
    written: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.folder = Path(self.folder)
        self._rows: list[dict] = []
        self._bytes = 0
        self._index = self.first_index

    def add(self, row: dict) -> bool:
        """Adds a document; returns True when that filled a shard and it was written."""
        self._rows.append(row)
        self._bytes += len(row["text"].encode("utf-8"))
        if self._bytes >= self.shard_bytes:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        if not self._rows:
            return
        path = self.folder / f"{self.prefix}-{self._index:05d}.parquet"
        write_parquet_atomic(path, self._rows)
        self.written.append(path.name)
        self._index += 1
        self._rows, self._bytes = [], 0

    @property
    def next_index(self) -> int:
        return self._index


def iter_parquet_values(path: str | os.PathLike, batch_size: int = 2048):
    """Streams rows of a parquet file as tuples of the COLUMNS values in that order (missing columns and
    nulls read as ''): column by column, without a dict per row (the clean stage reads every shard in
    three phases)."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    if "text" not in names:
        raise ValueError(f"{path}: parquet file has no 'text' column (columns: {sorted(names)})")
    columns = [c for c in COLUMNS if c in names]
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        data = batch.to_pydict()
        blank = [""] * batch.num_rows
        values = [data.get(c, blank) for c in COLUMNS]
        # a null reads as None (as '' here); a column without one is used as pyarrow gives it
        values = [column if None not in column else [v if v is not None else "" for v in column]
                  for column in values]
        yield from zip(*values)

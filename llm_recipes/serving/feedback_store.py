"""Durable storage of chat feedback: thumbs up/down and suggested better answers, in SQLite.

Every write is its own transaction with `synchronous=FULL` in WAL mode, so a row the server
acknowledged survives a crash or a restart. The store is the hand-off to alignment:
`llm-recipes feedback` turns its rows into DPO and KTO datasets (see `llm_recipes.serving.preferences`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    model TEXT NOT NULL,
    response_id TEXT,
    messages TEXT NOT NULL,      -- JSON list of {role, content}: the conversation up to the answer
    completion TEXT NOT NULL,    -- the model's answer that was rated
    rating INTEGER,              -- +1 thumbs up, -1 thumbs down, NULL when only a suggestion was given
    suggestion TEXT              -- the user's better answer, or NULL
);
"""
EXPECTED_COLUMNS = ["id", "created_at", "model", "response_id", "messages", "completion", "rating", "suggestion"]
SELECT_ALL = ("SELECT id, created_at, model, response_id, messages, completion, rating, suggestion "
              "FROM feedback ORDER BY id")


class FeedbackStoreError(RuntimeError):
    """The feedback database cannot be used (damaged, or not a feedback database)."""


class FeedbackStore:
    """A SQLite file of feedback rows, safe to use from several threads.

    Args:
        path: the database file (created with its folder when missing).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # fsync on every commit: acknowledged means stored
            self._conn.executescript(SCHEMA)
            columns = [row[1] for row in self._conn.execute("PRAGMA table_info(feedback)")]
            if columns != EXPECTED_COLUMNS:
                raise sqlite3.DatabaseError(f"its feedback table has columns {columns}, expected {EXPECTED_COLUMNS}")
            self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()
        except sqlite3.DatabaseError as e:
            self._conn.close()
            aside = f"{self.path}.damaged"
            raise FeedbackStoreError(
                f"the feedback store {str(self.path)!r} cannot be used: {e}. Its rows cannot be read as they are; "
                f"move it aside (mv {self.path} {aside}; also any {self.path.name}-wal and -shm beside it) and "
                "start again: a new, empty store is created. `sqlite3 FILE .recover` may get rows back from "
                "the damaged copy.") from e

    def add(self, *, model: str, messages: list[dict], completion: str, rating: int | None,
            suggestion: str | None, response_id: str | None = None) -> int:
        """Stores one feedback row and returns its id once it is on disk."""
        if rating not in (1, -1, None):
            raise ValueError(f"rating must be 1, -1 or None, got {rating!r}")
        if rating is None and not suggestion:
            raise ValueError("feedback needs a rating or a suggestion")
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO feedback (created_at, model, response_id, messages, completion, rating, suggestion) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), model, response_id, json.dumps(messages, ensure_ascii=False), completion, rating,
                 suggestion),
            )
            return int(cursor.lastrowid)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])

    def rows(self) -> Iterator[dict[str, Any]]:
        """All rows, oldest first, with `messages` decoded."""
        with self._lock:
            fetched = self._conn.execute(SELECT_ALL).fetchall()
        yield from map(_decode, fetched)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_readonly_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads every row of a feedback database without creating or changing anything."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feedback database {str(path)!r} does not exist (expected the feedback.sqlite "
                                "that `llm-recipes serve` writes into its output_dir)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("SELECT 1 FROM feedback LIMIT 1")
    except sqlite3.DatabaseError as e:
        conn.close()
        raise ValueError(f"{str(path)!r} is not a feedback database: {e}") from e
    try:
        fetched = conn.execute(SELECT_ALL).fetchall()
    finally:
        conn.close()
    return [_decode(r) for r in fetched]


def _decode(row) -> dict[str, Any]:
    return {"id": row[0], "created_at": row[1], "model": row[2], "response_id": row[3],
            "messages": json.loads(row[4]), "completion": row[5], "rating": row[6], "suggestion": row[7]}

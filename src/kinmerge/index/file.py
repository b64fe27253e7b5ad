"""The index file: one SQLite database holding the sketches of a family of models.

A thin adapter: rows in, arrays out; the math lives in ``kinmerge.index.query`` and
``kinmerge.index.family_tree``, the reading of models in ``kinmerge.index.api``.

Layout (format 1):

* ``meta``: one JSON value per key: ``format``, ``seed``, ``size``, ``coarse`` (buckets of the
  folded screening sketch), ``groups`` (layer-group labels), ``group_size``, ``n`` (positions
  per sketch), ``coverage_id``, ``base`` (``{"id", "ref", "label"}``), ``created``;
* ``shared``: arrays every model has in common, stored once: ``ones`` (the sketch of ones, the
  same for every model of the index), ``group_ones``, ``group_n``, ``base_groups`` (the group
  sketches of the base's own weights, for SLERP's curvature in the family tree);
* ``models``: one row per model, keyed by content id: label, reference, when it was made
  (newest weight file's mtime, if local), exact ``n``, ``Σδ``, ``Σδ²``, the float32 sketch
  values, their fold to ``coarse`` buckets (for screening thousands at once), and the layer
  groups' values and exact moments.

Why SQLite: one file, transactions (an ``add`` commits whole models or nothing, Ctrl-C
included), concurrent readers, and the coarse sketches of 10,000 models read in one query.
Sketch values are float32 (relative rounding 6e-8, far below any estimate's error).

Example:
    >>> import tempfile, pathlib
    >>> f = IndexFile(pathlib.Path(tempfile.mkdtemp()) / "family.kmi")
    >>> f.initialised, f.count()
    (False, 0)
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kinmerge.errors import KinmergeError

__all__ = ["FORMAT", "IndexFile", "IndexFileError", "ModelRow"]

FORMAT = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS shared (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS models (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,          -- content id
        label TEXT NOT NULL,
        ref TEXT NOT NULL,                -- absolute path or hub id
        made REAL,                        -- newest weight file's mtime (local models)
        added TEXT NOT NULL,
        n INTEGER NOT NULL,
        sum REAL NOT NULL,
        sumsq REAL NOT NULL,
        coarse BLOB NOT NULL,             -- float32 fold of the sketch
        sketch BLOB NOT NULL,             -- float32 sketch values
        group_moments BLOB,               -- float64 (groups, 2): Σδ, Σδ² per layer group
        groups BLOB                       -- float32 (groups, group_size)
    )""",
)


class IndexFileError(KinmergeError, ValueError):
    """The file is not a kinmerge index, or was written by a newer kinmerge."""


@dataclass(frozen=True)
class ModelRow:
    """One indexed model, without its arrays."""

    seq: int
    id: str
    label: str
    ref: str
    made: float | None
    added: str
    n: int
    sum: float
    sumsq: float


class IndexFile:
    """The SQLite file of an index (created on the first write)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None

    # -- connection -----------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path.is_dir():
                raise IndexFileError(f"{self.path} is a folder; give the index a file name (e.g. family.kmi)")
            exists = self.path.exists()
            if exists and self.path.stat().st_size and not _is_sqlite(self.path):
                raise IndexFileError(f"{self.path} is not a kinmerge index (not an SQLite file); give a new file name")
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode = WAL")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                conn.close()
                raise IndexFileError(f"{self.path} is an SQLite file but not a kinmerge index; give a new file name")
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
                if row is not None and json.loads(row[0]) > FORMAT:
                    conn.close()
                    raise IndexFileError(f"{self.path} was written by a newer kinmerge (index format "
                                         f"{json.loads(row[0])}); upgrade kinmerge to read it")
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> IndexFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside is committed together or not at all."""
        conn = self._connection()
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- meta and shared arrays -----------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        if not self.path.exists():
            return False
        return self.meta().get("format") is not None

    def meta(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        conn = self._connection()
        try:
            return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        except sqlite3.OperationalError:  # no table yet
            return {}

    def shared(self, name: str, dtype: str) -> np.ndarray:
        row = self._connection().execute("SELECT value FROM shared WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise IndexFileError(f"{self.path}: the index lacks its shared array {name!r}; it is damaged — rebuild it")
        return np.frombuffer(row[0], dtype=dtype)

    @staticmethod
    def write_meta(conn: sqlite3.Connection, meta: dict[str, Any], shared: dict[str, np.ndarray]) -> None:
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [(k, json.dumps(v)) for k, v in {"format": FORMAT, **meta}.items()])
        conn.executemany("INSERT OR REPLACE INTO shared (name, value) VALUES (?, ?)",
                         [(k, np.ascontiguousarray(v).tobytes()) for k, v in shared.items()])

    # -- models ---------------------------------------------------------------------------------
    def count(self) -> int:
        if not self.initialised:
            return 0
        return int(self._connection().execute("SELECT count(*) FROM models").fetchone()[0])

    def ids(self) -> set[str]:
        if not self.initialised:
            return set()
        return {r[0] for r in self._connection().execute("SELECT id FROM models")}

    def rows(self, ids: Iterable[str] | None = None) -> list[ModelRow]:
        """Models in the order they were added (``ids``: only these)."""
        if not self.initialised:
            return []
        sql = "SELECT seq, id, label, ref, made, added, n, sum, sumsq FROM models ORDER BY seq"
        out = [ModelRow(*r) for r in self._connection().execute(sql)]
        if ids is not None:
            wanted = set(ids)
            out = [r for r in out if r.id in wanted]
        return out

    @staticmethod
    def insert(conn: sqlite3.Connection, row: dict[str, Any]) -> None:
        """Insert one model (``row``: the columns; arrays as numpy); an id present is left as is."""
        cols = ("id", "label", "ref", "made", "added", "n", "sum", "sumsq", "coarse", "sketch", "group_moments",
                "groups")
        vals = [row.get(c) for c in cols]
        vals[4] = vals[4] or datetime.now(UTC).isoformat(timespec="seconds")
        vals = [np.ascontiguousarray(v).tobytes() if isinstance(v, np.ndarray) else v for v in vals]
        conn.execute(f"INSERT OR IGNORE INTO models ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", vals)

    def arrays(self, column: str, ids: Sequence[str], dtype: str = "<f4") -> np.ndarray:
        """``column`` of the given models, stacked in the order of ``ids``: (len(ids), ...)."""
        if column not in ("coarse", "sketch", "group_moments", "groups"):
            raise ValueError(f"not an array column: {column}")
        got: dict[str, bytes] = {}
        conn = self._connection()
        for lo in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            part = ids[lo : lo + 500]
            sql = f"SELECT id, {column} FROM models WHERE id IN ({', '.join('?' * len(part))})"
            got.update({r[0]: r[1] for r in conn.execute(sql, list(part))})
        missing = [i for i in ids if got.get(i) is None]
        if missing:
            raise IndexFileError(f"{self.path}: no {column} stored for model {missing[0]}")
        return np.stack([np.frombuffer(got[i], dtype=dtype) for i in ids]) if ids else np.empty((0, 0), dtype)

    def all_coarse(self) -> tuple[list[str], np.ndarray]:
        """Every model's id and coarse sketch, in the order added: one query."""
        if not self.initialised:
            return [], np.empty((0, 0), np.float32)
        ids: list[str] = []
        blobs: list[bytes] = []
        for mid, blob in self._connection().execute("SELECT id, coarse FROM models ORDER BY seq"):
            ids.append(mid)
            blobs.append(blob)
        if not blobs:
            return ids, np.empty((0, 0), np.float32)
        return ids, np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1)


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"

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
import math
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
            self.check_folder()
            exists = self.path.exists()
            if exists and self.path.stat().st_size and not _is_sqlite(self.path):
                raise IndexFileError(f"{self.path} is not a kinmerge index (not an SQLite file); give a new file name")
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as exc:
                raise IndexFileError(f"{self.path}: cannot open the index ({exc}); check the folder's permissions "
                                     "and free space") from None
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

    def check_folder(self) -> None:
        """The index's folder must exist (checked before any model is read)."""
        if not self.path.parent.is_dir():
            raise IndexFileError(f"{self.path}: the folder {self.path.parent} does not exist; create it first "
                                 "or give the index a path in an existing folder")

    def discard_if_empty(self) -> None:
        """Remove the file if it holds no model (what a failed first ``add`` made)."""
        try:
            empty = self.count() == 0
        except (IndexFileError, sqlite3.Error):
            return
        if empty:
            self.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

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
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._write_error(exc) from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise self._write_error(exc) from None
            raise

    def _write_error(self, exc: sqlite3.Error) -> IndexFileError:
        """A write that failed (a full disk, a read-only folder) as one line; nothing of it was kept."""
        return IndexFileError(f"{self.path}: cannot write the index ({exc}); free space (or write permission) on "
                              f"{self.path.parent.absolute()} and add again: the models of this batch were not "
                              "added, those before it are kept")

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
            rows = conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.OperationalError:  # no table yet
            return {}
        out: dict[str, Any] = {}
        for k, v in rows:
            try:
                out[k] = json.loads(v)
            except (TypeError, ValueError):
                raise IndexFileError(f"{self.path} is damaged: its meta value {k!r} is not valid JSON; rebuild the "
                                     "index (`kinmerge index add` into a new file) or restore it from a copy") from None
        return out

    def shared(self, name: str, dtype: str) -> np.ndarray:
        row = self._connection().execute("SELECT value FROM shared WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise IndexFileError(f"{self.path}: the index lacks its shared array {name!r}; it is damaged — rebuild it")
        return np.frombuffer(row[0], dtype=dtype)

    def set_base_ref(self, ref: str) -> None:
        """Re-point the index at its base's new place (the caller checked the content id)."""
        meta = self.meta()
        with self.transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('base', ?)",
                         (json.dumps({**meta["base"], "ref": ref}),))

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
        positions = self.meta().get("n")
        out = [self._checked(ModelRow(*r), positions) for r in self._connection().execute(sql)]
        if ids is not None:
            wanted = set(ids)
            out = [r for r in out if r.id in wanted]
        return out

    def damaged(self, model: str, problem: str) -> IndexFileError:
        """The one-line error for a stored value that is not what the format says."""
        return IndexFileError(f"{self.path} is damaged: model {model}: {problem}; rebuild the index (`kinmerge "
                              "index add` into a new file) or restore it from a copy")

    def _checked(self, row: ModelRow, positions: object) -> ModelRow:
        """A model row whose moments are numbers that can be moments (a damaged value must not
        read as a model whose delta is constant or zero)."""
        who = f"{row.label} ({str(row.id)[:12]})"
        if isinstance(row.n, bool) or not isinstance(row.n, int) or row.n < 1:
            raise self.damaged(who, f"n {row.n!r} is not a positive count")
        if isinstance(positions, int) and row.n != positions:
            raise self.damaged(who, f"n {row.n!r} is not the index's {positions} positions per sketch")
        for name, value in (("sum", row.sum), ("sumsq", row.sumsq)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise self.damaged(who, f"{name} {value!r} is not a finite number")
        if row.sumsq < 0 or row.sum * row.sum > row.sumsq * row.n * (1 + 1e-6) + 1e-300:
            raise self.damaged(who, f"sum {row.sum!r} and sumsq {row.sumsq!r} cannot both be right "
                                    "(Σδ² below (Σδ)²/n)")
        return row

    def _expected_length(self, column: str) -> int | None:
        """Bytes a stored array of ``column`` must have (None: not fixed by the meta)."""
        meta = self.meta()
        size, groups, group_size = meta.get("size"), meta.get("groups") or [], meta.get("group_size") or 0
        if not isinstance(size, int):
            return None
        return {"sketch": 4 * size, "coarse": 4 * min(int(meta.get("coarse") or size), size),
                "group_moments": 16 * len(groups), "groups": 4 * len(groups) * group_size}.get(column)

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
        want = self._expected_length(column)
        out = []
        for i in ids:
            blob = got[i]
            if not isinstance(blob, bytes) or (want is not None and len(blob) != want):
                size = len(blob) if isinstance(blob, bytes) else type(blob).__name__
                raise self.damaged(i[:12], f"its {column} has {size} bytes, not {want} (truncated?)")
            values = np.frombuffer(blob, dtype=dtype)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise self.damaged(i[:12], f"its {column} holds values that are not finite numbers")
            out.append(values)
        return np.stack(out) if ids else np.empty((0, 0), dtype)

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
        want = self._expected_length("coarse")
        for mid, blob in zip(ids, blobs, strict=True):
            if not isinstance(blob, bytes) or (want is not None and len(blob) != want):
                raise self.damaged(mid[:12], f"its coarse sketch has {len(blob) if isinstance(blob, bytes) else 0} "
                                             f"bytes, not {want} (truncated?)")
        coarse = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(blobs), -1)
        if not np.isfinite(coarse).all():
            bad = ids[int(np.argwhere(~np.isfinite(coarse))[0][0])]
            raise self.damaged(bad[:12], "its coarse sketch holds values that are not finite numbers")
        return ids, coarse


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"

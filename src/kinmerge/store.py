"""The run store: one SQLite file per run directory, ``RUN_DIR/kinmerge.db``.

Everything an evolution run learns is recorded here — models and their lineage, evaluations,
kinship values, the plan of each generation and a timed log of every step — so that a run killed
at any instant resumes where it stopped, and reports and model cards are views of one file.

Why it looks the way it does:

- **Content-addressed and idempotent.** Models are keyed by content id; every insert is
  ``INSERT OR IGNORE`` or an upsert, so replaying the steps after a kill is harmless.
- **Plan before execute.** A generation's plan is saved before any merge runs; on resume the
  runner executes the saved plan instead of planning again (``pending_plan``).
- **Runs share what they can.** Several runs (e.g. greedy and kinship strategies, or seeds) may
  use one store: models, evaluations and kinship are global facts, while the ``pool`` table says
  which models belong to which run and in which generation they joined it.
- **One writer.** An OS lock (``fcntl.flock`` on ``RUN_DIR/kinmerge.lock``) refuses a second run
  on the same directory. The kernel drops it when the holder exits, even on ``kill -9``, so there
  is never a stale lock to delete. Readers (reports) can open with ``lock=False``: WAL mode lets
  them read while the run writes.
- **Versioned schema.** Named migrations, recorded in the ``migrations`` table (sqlite-utils
  style). A store written by a newer kinmerge (a migration this code does not know) is refused.

Example:
    >>> import tempfile
    >>> with RunStore(tempfile.mkdtemp()) as store:
    ...     store.start_run("r1", strategy="greedy", config={"k": 3}, seed=0).status
    'running'

Not thread-safe: use one ``RunStore`` per thread (the runner writes from one thread).
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from kinmerge.errors import StoreError
from kinmerge.evolve.strategies import (
    METRICS,
    Plan,
    PoolModel,
    PoolState,
    mean_pairwise_kinship,
    merge_gain,
    missing_kinship,
    topk,
)

DB_NAME = "kinmerge.db"
LOCK_NAME = "kinmerge.lock"

RunStatus = Literal["running", "finished", "failed"]
Origin = Literal["foundation", "merge"]

# ---------------------------------------------------------------------------------------------
# Schema: named migrations, applied in order, each recorded once in ``migrations``
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema change. Never edit a released migration: add a new one after it."""

    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_initial",
        (
            """CREATE TABLE runs (
                id TEXT PRIMARY KEY,
                strategy TEXT NOT NULL,
                config TEXT NOT NULL,             -- JSON, keys sorted
                seed INTEGER,
                status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
                started TEXT NOT NULL,            -- ISO 8601, UTC
                finished TEXT
            )""",
            """CREATE TABLE models (
                id TEXT PRIMARY KEY,              -- content id
                path TEXT,
                origin TEXT NOT NULL CHECK (origin IN ('foundation', 'merge')),
                generation INTEGER NOT NULL CHECK (generation >= 0),  -- when first made
                recipe TEXT,                      -- JSON (merges only)
                created TEXT NOT NULL
            )""",
            """CREATE TABLE parents (
                child TEXT NOT NULL REFERENCES models(id),
                parent TEXT NOT NULL REFERENCES models(id),
                position INTEGER NOT NULL CHECK (position >= 0),
                PRIMARY KEY (child, position),
                UNIQUE (child, parent),
                CHECK (child <> parent)
            )""",
            "CREATE INDEX parents_parent ON parents(parent)",
            """CREATE TABLE pool (
                run_id TEXT NOT NULL REFERENCES runs(id),
                model_id TEXT NOT NULL REFERENCES models(id),
                generation INTEGER NOT NULL CHECK (generation >= 0),  -- joined this run's pool
                added TEXT NOT NULL,
                PRIMARY KEY (run_id, model_id)
            )""",
            """CREATE TABLE evaluations (
                model_id TEXT NOT NULL REFERENCES models(id),
                evaluator TEXT NOT NULL,          -- evaluator key (evaluator + task-set config)
                task TEXT NOT NULL,
                score REAL NOT NULL,
                details TEXT,                     -- JSON
                created TEXT NOT NULL,
                PRIMARY KEY (model_id, evaluator, task)
            )""",
            """CREATE TABLE kinship (
                model_a TEXT NOT NULL REFERENCES models(id),
                model_b TEXT NOT NULL REFERENCES models(id),
                metric TEXT NOT NULL CHECK (metric IN ('pcc', 'cs', 'ed')),
                scope TEXT NOT NULL DEFAULT 'global',  -- 'global' or a labelled breakdown
                value REAL NOT NULL,
                created TEXT NOT NULL,
                PRIMARY KEY (model_a, model_b, metric, scope),
                CHECK (model_a < model_b)         -- one canonical order per pair
            )""",
            "CREATE INDEX kinship_b ON kinship(model_b)",
            """CREATE TABLE plans (
                run_id TEXT NOT NULL REFERENCES runs(id),
                generation INTEGER NOT NULL CHECK (generation >= 1),
                plan TEXT NOT NULL,               -- JSON: strategies.Plan.to_dict()
                stop TEXT,
                status TEXT NOT NULL CHECK (status IN ('planned', 'done')),
                created TEXT NOT NULL,
                finished TEXT,
                PRIMARY KEY (run_id, generation)
            )""",
            """CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                run_id TEXT REFERENCES runs(id),
                ts TEXT NOT NULL,
                generation INTEGER,
                kind TEXT NOT NULL,
                message TEXT NOT NULL,
                duration_s REAL,
                payload TEXT                      -- JSON
            )""",
            "CREATE INDEX events_run ON events(run_id, id)",
        ),
    ),
)

_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS migrations (
    name TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL
)"""


# ---------------------------------------------------------------------------------------------
# Records returned by queries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One row of ``runs``."""

    id: str
    strategy: str
    config: dict[str, Any]
    seed: int | None
    status: RunStatus
    started: str
    finished: str | None


@dataclass(frozen=True)
class ModelRecord:
    """One model with its parents (in merge order)."""

    id: str
    path: str | None
    origin: Origin
    generation: int
    recipe: dict[str, Any] | None
    created: str
    parents: tuple[str, ...]


@dataclass(frozen=True)
class Event:
    """One row of the run's step log."""

    id: int
    run_id: str | None
    ts: str
    generation: int | None
    kind: str
    message: str
    duration_s: float | None
    payload: dict[str, Any] | None


@dataclass(frozen=True)
class GenerationSummary:
    """Scores of one generation of a run (one row of the paper's §5 table).

    ``best_score``/``mean_score`` are over the models that joined in this generation;
    ``pool_best`` is the best of the whole pool after it (what the paper's table reports).
    """

    generation: int
    models: int
    merges: int
    best_score: float | None
    mean_score: float | None
    pool_best: float | None


@dataclass(frozen=True)
class TopkKinship:
    """The top-k after a generation and their mean pairwise kinship (``None`` if not computed)."""

    generation: int
    top_k: tuple[str, ...]
    kinship: float | None


@dataclass(frozen=True)
class MergeGainRow:
    """One merge: its gain over its parents and its parents' kinship (paper §2's scatter plot)."""

    child: str
    parents: tuple[str, ...]
    generation: int
    reason: str | None
    child_score: float | None
    parents_mean: float | None
    merge_gain: float | None
    kinship: float | None


@dataclass(frozen=True)
class LineageNode:
    """A model and, recursively, its ancestors: the family tree behind one model."""

    id: str
    origin: Origin
    generation: int
    path: str | None
    recipe: dict[str, Any] | None
    parents: tuple[LineageNode, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain nested data (for ``--json`` and model cards)."""
        return {
            "id": self.id,
            "origin": self.origin,
            "generation": self.generation,
            "path": self.path,
            "recipe": self.recipe,
            "parents": [p.to_dict() for p in self.parents],
        }

    def ancestors(self) -> set[str]:
        """Ids of every ancestor (not including this model)."""
        out: set[str] = set()
        for p in self.parents:
            out.add(p.id)
            out |= p.ancestors()
        return out


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _dumps(obj: Any) -> str:
    # Sorted keys: equal configs give equal text, so a resume can compare them as strings.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _canonical(a: str, b: str) -> tuple[str, str]:
    if a == b:
        raise ValueError(f"kinship of a model with itself is not stored: {a!r}")
    return (a, b) if a < b else (b, a)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown kinship metric {metric!r}; choose one of {', '.join(METRICS)}")


def _check_score(score: float, what: str) -> float:
    value = float(score)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {score!r}")
    return value


class RunStore:
    """The SQLite store of one run directory.

    Args:
        run_dir: the run directory; created if missing. The database is ``run_dir/kinmerge.db``.
        lock: take the run lock (default). A run takes it; a report reader may pass ``False``.
            Without the lock the store never migrates (a live run may be using the schema).

    Raises:
        StoreError: the directory is in use by another process (with its pid), the file is not a
            kinmerge store, or it was written by a newer kinmerge (unknown migrations).

    Example:
        >>> import tempfile
        >>> with RunStore(tempfile.mkdtemp()) as store:
        ...     store.applied_migrations()
        ['0001_initial']
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, lock: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.db_path = self.run_dir / DB_NAME
        self.lock_path = self.run_dir / LOCK_NAME
        self._lock_fd: int | None = None
        self._depth = 0
        if lock:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _acquire_lock(self.run_dir, self.lock_path)
        elif not self.db_path.exists():
            raise StoreError(f"no kinmerge store at {self.db_path}; start a run there first")
        try:
            self._conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30.0)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.execute("PRAGMA busy_timeout = 30000")
            if lock:
                self._conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode is durable against a killed process (not a power cut): the
                # failure the runner must survive, at a fraction of FULL's fsyncs.
                self._conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate(apply=lock)
        except sqlite3.DatabaseError as exc:
            self._release()
            raise StoreError(f"{self.db_path} is not a readable kinmerge store: {exc}") from exc
        except BaseException:
            self._release()
            raise

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release the run lock (idempotent)."""
        self._release()

    def _release(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
            self._conn = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group writes into one transaction: all of them land, or none (nests; outermost wins).

        ``BEGIN IMMEDIATE`` takes the write lock up front, so a reader-turned-writer never
        deadlocks against another connection.
        """
        if self._conn is None:
            raise StoreError(f"the store at {self.db_path} is closed")
        outer = self._depth == 0
        if outer:
            self._conn.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield self._conn
        except BaseException:
            self._depth -= 1
            if outer:
                self._conn.execute("ROLLBACK")
            raise
        self._depth -= 1
        if outer:
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _write(self, what: str) -> Iterator[sqlite3.Connection]:
        """A transaction whose constraint failures read as one actionable line."""
        try:
            with self.transaction() as conn:
                yield conn
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"{what}: {exc} (in {self.db_path})") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        if self._conn is None:
            raise StoreError(f"the store at {self.db_path} is closed")
        return self._conn.execute(sql, params).fetchall()

    # -- migrations -----------------------------------------------------------------------------

    def _migrate(self, *, apply: bool) -> None:
        tables = {r[0] for r in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "migrations" not in tables:
            raise StoreError(
                f"{self.db_path} is an SQLite file but not a kinmerge store (no migrations table); "
                "use another run directory"
            )
        applied = self.applied_migrations() if tables else []
        known = [m.name for m in MIGRATIONS]
        unknown = [n for n in applied if n not in known]
        if unknown:
            raise StoreError(
                f"{self.db_path} was written by a newer kinmerge (unknown schema migrations: "
                f"{', '.join(unknown)}); upgrade kinmerge to open it"
            )
        pending = [m for m in MIGRATIONS if m.name not in applied]
        if not pending:
            return
        if not apply:
            raise StoreError(
                f"{self.db_path} needs schema migrations ({', '.join(m.name for m in pending)}); "
                "open it with the run lock (no run active) to apply them"
            )
        with self.transaction() as conn:
            conn.execute(_MIGRATIONS_TABLE)
            # Re-read inside the write transaction: another opener may have migrated meanwhile.
            done = {r[0] for r in conn.execute("SELECT name FROM migrations")}
            for m in MIGRATIONS:
                if m.name in done:
                    continue
                for statement in m.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (m.name, _now())
                )

    def applied_migrations(self) -> list[str]:
        """Names of the migrations applied to this store, in the order they were applied."""
        return [r[0] for r in self._query("SELECT name FROM migrations ORDER BY rowid")]

    # -- runs -----------------------------------------------------------------------------------

    def start_run(
        self, run_id: str, *, strategy: str, config: Mapping[str, Any], seed: int | None = None
    ) -> RunInfo:
        """Start a run, or resume it if it exists with the same strategy, config and seed.

        Raises:
            StoreError: the run exists with a different strategy, config or seed (resuming it
                under other settings would mix two experiments in one pool).
        """
        config_json = _dumps(dict(config))
        with self._write(f"start run {run_id!r}") as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO runs (id, strategy, config, seed, status, started) "
                    "VALUES (?, ?, ?, ?, 'running', ?)",
                    (run_id, strategy, config_json, seed, _now()),
                )
            else:
                diffs = [
                    name
                    for name, old, new in (
                        ("strategy", row["strategy"], strategy),
                        ("config", row["config"], config_json),
                        ("seed", row["seed"], seed),
                    )
                    if old != new
                ]
                if diffs:
                    raise StoreError(
                        f"run {run_id!r} in {self.run_dir} was started with a different "
                        f"{' and '.join(diffs)}; resume it with the same settings or use a new run id"
                    )
                conn.execute(
                    "UPDATE runs SET status = 'running', finished = NULL WHERE id = ?", (run_id,)
                )
        run = self.get_run(run_id)
        assert run is not None
        return run

    def finish_run(self, run_id: str, status: RunStatus = "finished") -> None:
        """Mark a run finished or failed (a later ``start_run`` can resume it)."""
        if status not in ("finished", "failed"):
            raise ValueError(f"a run finishes as 'finished' or 'failed', not {status!r}")
        with self._write(f"finish run {run_id!r}") as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, _now(), run_id)
            )
            if cur.rowcount == 0:
                raise StoreError(f"no run {run_id!r} in {self.db_path}")

    def get_run(self, run_id: str) -> RunInfo | None:
        """The run's row, or ``None``."""
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run_info(rows[0]) if rows else None

    def runs(self) -> list[RunInfo]:
        """Every run in the store, oldest first."""
        return [_run_info(r) for r in self._query("SELECT * FROM runs ORDER BY started, id")]

    # -- models and lineage ---------------------------------------------------------------------

    def add_model(
        self,
        model_id: str,
        *,
        origin: Origin,
        generation: int,
        path: str | os.PathLike[str] | None = None,
        recipe: Mapping[str, Any] | None = None,
        parents: Sequence[str] = (),
        run_id: str | None = None,
    ) -> bool:
        """Record a model (and optionally its parents and its place in a run's pool) atomically.

        Idempotent: a model already stored keeps its first row (the id is a content hash, so the
        content cannot differ). Returns whether the model row was new.

        Args:
            origin: ``"foundation"`` or ``"merge"``.
            generation: the generation it was made in (0 for a foundation model).
            parents: for a merge, its parents in merge order (``parents[0]`` = SLERP base).
            run_id: also add it to this run's pool at ``generation``.
        """
        if origin not in ("foundation", "merge"):
            raise ValueError(f"origin must be 'foundation' or 'merge', got {origin!r}")
        with self._write(f"add model {model_id!r}") as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO models (id, path, origin, generation, recipe, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    model_id,
                    None if path is None else str(path),
                    origin,
                    generation,
                    None if recipe is None else _dumps(dict(recipe)),
                    _now(),
                ),
            )
            if parents:
                self.add_parents(model_id, parents)
            if run_id is not None:
                self.add_to_pool(run_id, model_id, generation)
        return cur.rowcount == 1

    def add_parents(self, child: str, parents: Sequence[str]) -> None:
        """Record a child's parents in merge order (idempotent).

        Raises:
            StoreError: the child already has a different parent list (a content id names one
                merge, so this is a bug upstream), or a model is unknown.
        """
        parents = tuple(parents)
        with self._write(f"add parents of {child!r}") as conn:
            existing = tuple(
                r[0]
                for r in conn.execute(
                    "SELECT parent FROM parents WHERE child = ? ORDER BY position", (child,)
                )
            )
            if existing and existing != parents:
                raise StoreError(
                    f"model {child!r} already has parents {list(existing)}, not {list(parents)}; "
                    "a content id names exactly one merge"
                )
            conn.executemany(
                "INSERT OR IGNORE INTO parents (child, parent, position) VALUES (?, ?, ?)",
                [(child, p, i) for i, p in enumerate(parents)],
            )

    def add_to_pool(self, run_id: str, model_id: str, generation: int) -> None:
        """Add a stored model to a run's pool at ``generation`` (idempotent: first one wins)."""
        with self._write(f"add model {model_id!r} to the pool of run {run_id!r}") as conn:
            conn.execute(
                "INSERT OR IGNORE INTO pool (run_id, model_id, generation, added) "
                "VALUES (?, ?, ?, ?)",
                (run_id, model_id, generation, _now()),
            )

    def get_model(self, model_id: str) -> ModelRecord | None:
        """A model with its parents, or ``None``."""
        rows = self._query("SELECT * FROM models WHERE id = ?", (model_id,))
        if not rows:
            return None
        r = rows[0]
        parents = tuple(
            p[0]
            for p in self._query(
                "SELECT parent FROM parents WHERE child = ? ORDER BY position", (model_id,)
            )
        )
        return ModelRecord(
            id=r["id"],
            path=r["path"],
            origin=r["origin"],
            generation=r["generation"],
            recipe=_loads(r["recipe"]),
            created=r["created"],
            parents=parents,
        )

    def lineage(self, model_id: str) -> LineageNode:
        """The family tree of a model: the model, its parents, theirs, ... down to foundations.

        A model reached along two paths (a shared ancestor) appears under each; it is read once.

        Raises:
            StoreError: the model is not in the store.

        Example:
            ``store.lineage(best).ancestors()`` is the set of every model it descends from.
        """
        models = {r["id"]: r for r in self._query("SELECT * FROM models")}
        parents: dict[str, list[str]] = defaultdict(list)
        for r in self._query("SELECT child, parent FROM parents ORDER BY child, position"):
            parents[r["child"]].append(r["parent"])
        if model_id not in models:
            raise StoreError(f"model {model_id!r} is not in the store at {self.db_path}")
        built: dict[str, LineageNode] = {}

        def build(mid: str, path: tuple[str, ...]) -> LineageNode:
            if mid in path:  # impossible with content ids; guards a hand-edited database
                raise StoreError(f"lineage cycle through model {mid!r} in {self.db_path}")
            if mid not in built:
                r = models[mid]
                built[mid] = LineageNode(
                    id=mid,
                    origin=r["origin"],
                    generation=r["generation"],
                    path=r["path"],
                    recipe=_loads(r["recipe"]),
                    parents=tuple(build(p, path + (mid,)) for p in parents.get(mid, ())),
                )
            return built[mid]

        return build(model_id, ())

    # -- evaluations ----------------------------------------------------------------------------

    def record_evaluation(
        self,
        model_id: str,
        evaluator: str,
        task: str,
        score: float,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one task score (upsert: re-evaluating replaces the score)."""
        self.record_evaluations(model_id, evaluator, {task: score}, details={task: details})

    def record_evaluations(
        self,
        model_id: str,
        evaluator: str,
        scores: Mapping[str, float],
        details: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> None:
        """Record every task score of one evaluation in one transaction (all or none).

        Args:
            evaluator: the evaluator key (which evaluator, with which task-set configuration).
            scores: ``{task: score}``.
            details: optional ``{task: JSON-able details}``.
        """
        details = details or {}
        rows = [
            (
                model_id,
                evaluator,
                task,
                _check_score(score, f"score of {model_id!r} on {task!r}"),
                None if details.get(task) is None else _dumps(details[task]),
                _now(),
            )
            for task, score in scores.items()
        ]
        with self._write(f"record evaluation of {model_id!r} ({evaluator})") as conn:
            conn.executemany(
                "INSERT INTO evaluations (model_id, evaluator, task, score, details, created) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (model_id, evaluator, task) DO UPDATE SET "
                "score = excluded.score, details = excluded.details, created = excluded.created",
                rows,
            )

    def evaluators(self) -> list[str]:
        """The evaluator keys with at least one recorded score."""
        return [r[0] for r in self._query("SELECT DISTINCT evaluator FROM evaluations ORDER BY 1")]

    def _resolve_evaluator(self, evaluator: str | None) -> str | None:
        if evaluator is not None:
            return evaluator
        keys = self.evaluators()
        if len(keys) > 1:
            raise StoreError(
                f"{self.db_path} holds scores from several evaluators ({', '.join(keys)}); "
                "say which one to use (evaluator=...)"
            )
        return keys[0] if keys else None

    def get_scores(
        self, model_ids: Iterable[str] | None = None, *, evaluator: str | None = None
    ) -> dict[str, dict[str, float]]:
        """Task scores ``{model: {task: score}}`` of one evaluator.

        Args:
            model_ids: restrict to these models (default: all).
            evaluator: the evaluator key; may be omitted when the store holds only one.

        Raises:
            StoreError: ``evaluator`` omitted while several are recorded.
        """
        key = self._resolve_evaluator(evaluator)
        wanted = None if model_ids is None else set(model_ids)
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for r in self._query(
            "SELECT model_id, task, score FROM evaluations WHERE evaluator = ?", (key,)
        ):
            if wanted is None or r["model_id"] in wanted:
                out[r["model_id"]][r["task"]] = r["score"]
        return dict(out)

    def average_scores(
        self, model_ids: Iterable[str] | None = None, *, evaluator: str | None = None
    ) -> dict[str, float | None]:
        """Average task score ``P̄`` per model (paper §2), ``None`` if not fully evaluated.

        The task set is every task recorded under the evaluator key; a model missing one of them
        gets ``None`` rather than a mean over fewer tasks, which would not be comparable.
        """
        key = self._resolve_evaluator(evaluator)
        tasks = {r[0] for r in self._query(
            "SELECT DISTINCT task FROM evaluations WHERE evaluator = ?", (key,)
        )}
        scores = self.get_scores(model_ids, evaluator=key) if key is not None else {}
        ids = set(scores) if model_ids is None else set(model_ids)
        out: dict[str, float | None] = {}
        for mid in sorted(ids):
            s = scores.get(mid, {})
            out[mid] = math.fsum(s.values()) / len(s) if tasks and set(s) == tasks else None
        return out

    # -- kinship --------------------------------------------------------------------------------

    def record_kinship(
        self, a: str, b: str, metric: str, value: float, *, scope: str = "global"
    ) -> None:
        """Record one kinship value (pair order does not matter; upsert)."""
        self.record_kinships({(a, b): value}, metric, scope=scope)

    def record_kinships(
        self,
        values: Mapping[tuple[str, str] | frozenset[str], float],
        metric: str,
        *,
        scope: str = "global",
    ) -> None:
        """Record many kinship values of one metric in one transaction (a scan's output).

        Args:
            values: ``{(a, b): value}`` or ``{pair(a, b): value}``.
            metric: ``"pcc"``, ``"cs"`` or ``"ed"``.
            scope: ``"global"`` for the paper's whole-vector kinship, or a label for a
                breakdown (e.g. ``"layer:3"``), which is never mixed with the global value.
        """
        _check_metric(metric)
        rows = []
        for key, value in values.items():
            a, b = _canonical(*sorted(key)) if isinstance(key, frozenset) else _canonical(*key)
            rows.append((a, b, metric, scope, _check_score(value, f"kinship of {a!r}, {b!r}"), _now()))
        with self._write(f"record {metric} kinship") as conn:
            conn.executemany(
                "INSERT INTO kinship (model_a, model_b, metric, scope, value, created) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (model_a, model_b, metric, scope) DO UPDATE SET "
                "value = excluded.value, created = excluded.created",
                rows,
            )

    def get_kinship(
        self,
        metric: str = "pcc",
        *,
        model_ids: Iterable[str] | None = None,
        scope: str = "global",
    ) -> dict[frozenset[str], float]:
        """Kinship values ``{pair(a, b): value}`` of one metric and scope.

        Args:
            model_ids: only pairs with both models in this set (default: all pairs).
        """
        _check_metric(metric)
        wanted = None if model_ids is None else set(model_ids)
        return {
            frozenset((r["model_a"], r["model_b"])): r["value"]
            for r in self._query(
                "SELECT model_a, model_b, value FROM kinship WHERE metric = ? AND scope = ?",
                (metric, scope),
            )
            if wanted is None or (r["model_a"] in wanted and r["model_b"] in wanted)
        }

    # -- plans ----------------------------------------------------------------------------------

    def save_plan(self, run_id: str, plan: Plan) -> Plan:
        """Save a generation's plan *before* executing it; returns the plan stored.

        Idempotent: saving the same plan again is a no-op. A stop plan is saved as done (it has
        nothing to execute) and records why the run ended.

        Raises:
            StoreError: a different plan is already stored for that generation (a resumed run
                must execute the saved plan, not a new one), or the plan is a kinship request.
        """
        if plan.kinship_requests:
            raise StoreError(
                "a plan that requests kinship is not a decision; compute the kinship and plan again"
            )
        text = _dumps(plan.to_dict())
        with self._write(f"save the plan of generation {plan.generation}") as conn:
            row = conn.execute(
                "SELECT plan FROM plans WHERE run_id = ? AND generation = ?",
                (run_id, plan.generation),
            ).fetchone()
            if row is not None:
                stored = Plan.from_dict(json.loads(row["plan"]))
                if stored != plan:
                    raise StoreError(
                        f"run {run_id!r} already has a different plan for generation "
                        f"{plan.generation}; a resumed run executes the saved plan (get_plan)"
                    )
                return stored
            status = "done" if plan.stop else "planned"
            conn.execute(
                "INSERT INTO plans (run_id, generation, plan, stop, status, created, finished) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, plan.generation, text, plan.stop, status, _now(),
                 _now() if plan.stop else None),
            )
        return plan

    def get_plan(self, run_id: str, generation: int) -> Plan | None:
        """The saved plan of a generation, or ``None``."""
        rows = self._query(
            "SELECT plan FROM plans WHERE run_id = ? AND generation = ?", (run_id, generation)
        )
        return Plan.from_dict(json.loads(rows[0]["plan"])) if rows else None

    def plan_status(self, run_id: str, generation: int) -> str | None:
        """``"planned"``, ``"done"`` or ``None`` (no plan saved)."""
        rows = self._query(
            "SELECT status FROM plans WHERE run_id = ? AND generation = ?", (run_id, generation)
        )
        return rows[0]["status"] if rows else None

    def pending_plan(self, run_id: str) -> Plan | None:
        """The saved plan not yet done (what a resumed run must finish first), or ``None``."""
        rows = self._query(
            "SELECT plan FROM plans WHERE run_id = ? AND status = 'planned' "
            "ORDER BY generation LIMIT 1",
            (run_id,),
        )
        return Plan.from_dict(json.loads(rows[0]["plan"])) if rows else None

    def mark_plan_done(self, run_id: str, generation: int) -> None:
        """Mark a generation complete: every merge made, evaluated and recorded (idempotent)."""
        with self._write(f"mark generation {generation} done") as conn:
            row = conn.execute(
                "SELECT status FROM plans WHERE run_id = ? AND generation = ?",
                (run_id, generation),
            ).fetchone()
            if row is None:
                raise StoreError(f"run {run_id!r} has no plan for generation {generation}")
            if row["status"] != "done":
                conn.execute(
                    "UPDATE plans SET status = 'done', finished = ? "
                    "WHERE run_id = ? AND generation = ?",
                    (_now(), run_id, generation),
                )

    def last_completed_generation(self, run_id: str) -> int:
        """The last generation whose plan (with merges) is done; 0 = only foundation models."""
        rows = self._query(
            "SELECT MAX(generation) FROM plans "
            "WHERE run_id = ? AND status = 'done' AND stop IS NULL",
            (run_id,),
        )
        return rows[0][0] or 0

    def stop_reason(self, run_id: str) -> str | None:
        """Why the run stopped (its saved stop plan), or ``None`` if it has not."""
        rows = self._query(
            "SELECT stop FROM plans WHERE run_id = ? AND stop IS NOT NULL "
            "ORDER BY generation DESC LIMIT 1",
            (run_id,),
        )
        return rows[0]["stop"] if rows else None

    # -- events ---------------------------------------------------------------------------------

    def log_event(
        self,
        run_id: str | None,
        kind: str,
        message: str,
        *,
        generation: int | None = None,
        duration_s: float | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one step to the run's log; returns the event id.

        Example:
            ``store.log_event("r1", "merge", "merged a+b", generation=1, duration_s=12.5)``
        """
        with self._write(f"log event {kind!r}") as conn:
            cur = conn.execute(
                "INSERT INTO events (run_id, ts, generation, kind, message, duration_s, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, _now(), generation, kind, message, duration_s,
                 None if payload is None else _dumps(dict(payload))),
            )
        return int(cur.lastrowid or 0)

    @contextmanager
    def timed(
        self, run_id: str | None, kind: str, message: str, *, generation: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Time a step and log it when it ends; the yielded dict becomes the event's payload.

        A step that raises is logged as ``f"{kind}_failed"`` with the error, then re-raised.

        Example:
            ``with store.timed("r1", "evaluate", "m1", generation=2) as info: info["tasks"] = 3``
        """
        payload: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield payload
        except BaseException as exc:
            payload.setdefault("error", f"{type(exc).__name__}: {exc}")
            self.log_event(run_id, f"{kind}_failed", message, generation=generation,
                           duration_s=time.perf_counter() - start, payload=payload)
            raise
        self.log_event(run_id, kind, message, generation=generation,
                       duration_s=time.perf_counter() - start, payload=payload)

    def events(self, run_id: str | None = None, *, kind: str | None = None) -> list[Event]:
        """The step log, oldest first, optionally for one run and/or one kind."""
        sql, params = "SELECT * FROM events WHERE 1 = 1", []
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [
            Event(
                id=r["id"], run_id=r["run_id"], ts=r["ts"], generation=r["generation"],
                kind=r["kind"], message=r["message"], duration_s=r["duration_s"],
                payload=_loads(r["payload"]),
            )
            for r in self._query(sql + " ORDER BY id", params)
        ]

    # -- the strategies' view -------------------------------------------------------------------

    def _pool_rows(self, run_id: str) -> list[sqlite3.Row]:
        return self._query(
            "SELECT p.model_id AS id, p.generation AS generation, m.origin AS origin "
            "FROM pool p JOIN models m ON m.id = p.model_id WHERE p.run_id = ? "
            "ORDER BY p.generation, p.model_id",
            (run_id,),
        )

    def _parents_of(self, ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        wanted = set(ids)
        out: dict[str, list[str]] = defaultdict(list)
        for r in self._query("SELECT child, parent FROM parents ORDER BY child, position"):
            if r["child"] in wanted:
                out[r["child"]].append(r["parent"])
        return {k: tuple(v) for k, v in out.items()}

    def pool_state(
        self,
        run_id: str,
        *,
        evaluator: str | None = None,
        metric: str = "pcc",
        scope: str = "global",
    ) -> PoolState:
        """The run's pool after its last completed generation, as the strategies see it.

        - models: the pool members from generations ``<=`` the last completed one, with their
          average score (``None`` if not fully evaluated: the strategy will refuse to rank it);
        - kinship: the stored ``metric``/``scope`` values among those models;
        - merged_pairs: every pair in any saved plan of the run (done or pending) plus the parent
          pair of every pool member, so a pending merge is never planned twice.

        Example:
            ``get_strategy("kinship").plan(store.pool_state("r1"))``

        Raises:
            StoreError: no such run, or several evaluators and ``evaluator`` not given.
        """
        if self.get_run(run_id) is None:
            raise StoreError(f"no run {run_id!r} in {self.db_path}")
        generation = self.last_completed_generation(run_id)
        rows = [r for r in self._pool_rows(run_id) if r["generation"] <= generation]
        ids = [r["id"] for r in rows]
        scores = self.average_scores(ids, evaluator=evaluator)
        parents = self._parents_of(ids)
        models = tuple(
            PoolModel(r["id"], r["generation"], parents.get(r["id"], ()), scores.get(r["id"]))
            for r in rows
        )
        merged: set[frozenset[str]] = {frozenset(p) for p in parents.values() if len(set(p)) == 2}
        for r in self._query("SELECT plan FROM plans WHERE run_id = ?", (run_id,)):
            merged |= {m.pair for m in Plan.from_dict(json.loads(r["plan"])).merges}
        return PoolState(
            models=models,
            kinship=self.get_kinship(metric, model_ids=ids, scope=scope),
            merged_pairs=frozenset(merged),
            generation=generation,
            kinship_metric=metric,
        )

    # -- report queries -------------------------------------------------------------------------

    def _scored_pool(self, run_id: str, evaluator: str | None) -> list[PoolModel]:
        rows = self._pool_rows(run_id)
        ids = [r["id"] for r in rows]
        scores = self.average_scores(ids, evaluator=evaluator)
        parents = self._parents_of(ids)
        return [
            PoolModel(r["id"], r["generation"], parents.get(r["id"], ()), scores.get(r["id"]))
            for r in rows
        ]

    def generation_summary(
        self, run_id: str, *, evaluator: str | None = None
    ) -> list[GenerationSummary]:
        """Per generation: models added, merges made, best and mean score, best of the pool.

        Unscored models count in ``models``/``merges`` but not in the scores.
        """
        pool = self._scored_pool(run_id, evaluator)
        out = []
        for g in sorted({m.generation for m in pool}):
            new = [m for m in pool if m.generation == g]
            new_scores = [m.score for m in new if m.score is not None]
            so_far = [m.score for m in pool if m.generation <= g and m.score is not None]
            out.append(
                GenerationSummary(
                    generation=g,
                    models=len(new),
                    merges=sum(1 for m in new if m.parents),
                    best_score=max(new_scores) if new_scores else None,
                    mean_score=math.fsum(new_scores) / len(new_scores) if new_scores else None,
                    pool_best=max(so_far) if so_far else None,
                )
            )
        return out

    def merges_used(self, run_id: str) -> int:
        """How many merges the run's pool holds (the paper's "merges" column)."""
        rows = self._query(
            "SELECT COUNT(*) FROM pool p JOIN models m ON m.id = p.model_id "
            "WHERE p.run_id = ? AND m.origin = 'merge'",
            (run_id,),
        )
        return int(rows[0][0])

    def topk_kinship(
        self,
        run_id: str,
        k: int = 3,
        *,
        evaluator: str | None = None,
        metric: str = "pcc",
        scope: str = "global",
    ) -> list[TopkKinship]:
        """Per generation: the top-k of the pool after it and their mean pairwise kinship.

        This is the quantity early stopping watches (paper §4); ``kinship`` is ``None`` where a
        pair's value was never computed. Unscored models are left out of the ranking.
        """
        pool = [m for m in self._scored_pool(run_id, evaluator) if m.score is not None]
        if not pool:
            return []
        state = PoolState(tuple(pool), generation=max(m.generation for m in pool))
        kinship = self.get_kinship(metric, model_ids=[m.id for m in pool], scope=scope)
        out = []
        for g in sorted({m.generation for m in pool}):
            top = topk(state, k, generation=g)
            pairs = [frozenset((a, b)) for i, a in enumerate(top) for b in top[i + 1:]]
            value = (
                mean_pairwise_kinship(top, kinship)
                if len(top) > 1 and not missing_kinship(pairs, kinship)
                else None
            )
            out.append(TopkKinship(generation=g, top_k=top, kinship=value))
        return out

    def merge_gains(
        self,
        run_id: str,
        *,
        evaluator: str | None = None,
        metric: str = "pcc",
        scope: str = "global",
    ) -> list[MergeGainRow]:
        """One row per merge in the run: merge gain vs the kinship of its parents (paper §2).

        ``reason`` is why the strategy planned it (greedy / exploration / random), from the
        saved plans. Values that were never computed are ``None``.
        """
        pool = self._scored_pool(run_id, evaluator)
        ids = {m.id for m in pool}
        all_ids = ids | {p for m in pool for p in m.parents}
        scores = self.average_scores(all_ids, evaluator=evaluator)
        kinship = self.get_kinship(metric, model_ids=all_ids, scope=scope)
        reasons: dict[frozenset[str], str] = {}
        for r in self._query("SELECT plan FROM plans WHERE run_id = ?", (run_id,)):
            for m in Plan.from_dict(json.loads(r["plan"])).merges:
                reasons.setdefault(m.pair, m.reason)
        out = []
        for m in sorted((m for m in pool if m.parents), key=lambda m: (m.generation, m.id)):
            parent_scores = [scores.get(p) for p in m.parents]
            known = [s for s in parent_scores if s is not None]
            parents_mean = (
                math.fsum(known) / len(known) if len(known) == len(parent_scores) else None
            )
            gain = (
                merge_gain(m.score, known)
                if m.score is not None and parents_mean is not None
                else None
            )
            pairs = [frozenset((a, b)) for i, a in enumerate(m.parents) for b in m.parents[i + 1:]]
            kin = (
                mean_pairwise_kinship(m.parents, kinship)
                if len(set(m.parents)) > 1 and not missing_kinship(pairs, kinship)
                else None
            )
            out.append(
                MergeGainRow(
                    child=m.id,
                    parents=m.parents,
                    generation=m.generation,
                    reason=reasons.get(frozenset(m.parents)),
                    child_score=m.score,
                    parents_mean=parents_mean,
                    merge_gain=gain,
                    kinship=kin,
                )
            )
        return out


def _run_info(r: sqlite3.Row) -> RunInfo:
    return RunInfo(
        id=r["id"],
        strategy=r["strategy"],
        config=json.loads(r["config"]),
        seed=r["seed"],
        status=r["status"],
        started=r["started"],
        finished=r["finished"],
    )


# ---------------------------------------------------------------------------------------------
# The run lock
# ---------------------------------------------------------------------------------------------


def _acquire_lock(run_dir: Path, lock_path: Path) -> int:
    """Take the exclusive, non-blocking lock on ``lock_path``; returns its file descriptor.

    ``flock`` belongs to the open file, so the kernel drops it when the holder exits however it
    exits (``kill -9`` included): no stale lock can block a resume. The pid written into the file
    is only for the error message. POSIX only (kinmerge targets Linux/macOS).
    """
    import fcntl  # POSIX; imported here so ``import kinmerge.store`` itself never fails

    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StoreError(
            f"run directory {run_dir} is in use by pid {holder}; wait for it to finish or stop "
            "that process (its lock frees itself when it exits; there is nothing to delete)"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""``RunStore``: the SQLite file of one run directory, ``RUN_DIR/kinmerge.db``.

Everything an evolution run learns is recorded here — models and their lineage, evaluations,
kinship values, the plan of each generation and a timed log of every step — so that a run killed
at any instant resumes where it stopped, and reports and model cards are views of one file.

Why it looks the way it does:

- **Content-addressed and idempotent.** Models are keyed by content id; every insert is
  ``INSERT OR IGNORE`` or an upsert, so replaying the steps after a kill is harmless.
- **Plan before execute.** A generation's plan is saved before any merge runs; on resume the
  runner executes the saved plan instead of planning again (``pending_plan``).
- **Runs share what they can.** Several runs (strategies, seeds) may use one store: models,
  evaluations and kinship are global facts, while the ``pool`` table says which models belong to
  which run and in which generation they joined it.
- **One writer.** The run lock (:mod:`kinmerge.store.lock`) refuses a second run on the same
  directory. Readers (status, reports) open with ``lock=False``: WAL mode lets them read while
  the run writes.
- **Plain data out.** Reads return the pool's own types (:mod:`kinmerge.pool`); analytics over
  them (summaries per generation, merge gains) are pure functions elsewhere.

Example:
    >>> import tempfile
    >>> with RunStore(tempfile.mkdtemp()) as store:
    ...     store.start_run("r1", strategy="greedy", config={"k": 3}, seed=0).status
    'running'

Not thread-safe: use one ``RunStore`` per thread (the runner writes from one thread).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from kinmerge.errors import StoreError
from kinmerge.evaluate.fitness import Fitness
from kinmerge.kinship import check_metric
from kinmerge.pool import ModelRecord, Origin, Plan, PoolModel, PoolState
from kinmerge.store import lock as run_lock
from kinmerge.store.checks import damaged, read_json, read_number
from kinmerge.store.records import Event, LineageNode, RunRecord, RunStatus
from kinmerge.store.schema import KINSHIP_SOURCES, applied, migrate, now, pending_migrations

__all__ = ["DB_NAME", "RunStore", "discard_unused_store", "first_missing"]

DB_NAME = "kinmerge.db"
#: The prefix of a recorded path that is relative to the run directory.
RELATIVE = "./"


def _dumps(obj: Any) -> str:
    # Sorted keys: equal configs give equal text, so a resume can compare them as strings.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _canonical(a: str, b: str) -> tuple[str, str]:
    if a == b:
        raise ValueError(f"kinship of a model with itself is not stored: {a!r}")
    return (a, b) if a < b else (b, a)


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
        >>> from kinmerge.store import MIGRATIONS
        >>> with RunStore(tempfile.mkdtemp()) as store:
        ...     store.applied_migrations() == [m.name for m in MIGRATIONS]   # a new store has every migration
        True
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, lock: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.db_path = self.run_dir / DB_NAME
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        self._depth = 0
        #: Called with each event :meth:`log_event` records, once it is committed (the run's
        #: trackers follow the step log this way: ``kinmerge.evolve.tracking``).
        self.listeners: list[Callable[[Event], None]] = []
        if lock:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = run_lock.acquire(self.run_dir)
        elif not self.db_path.exists():
            raise StoreError(f"no kinmerge store at {self.db_path}; start a run there first")
        elif self.db_path.stat().st_size == 0:
            raise StoreError(f"{self.db_path} is empty (0 bytes), not a kinmerge store: the run's record is lost; "
                             "restore the file from a copy, or delete it and rerun to start over")
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
            if not lock and pending_migrations(self._conn):
                self._migrate_as_reader()
            else:
                migrate(self._conn, self.db_path, apply=lock)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{self.db_path} is not a readable kinmerge store ({exc}); if it is a damaged run "
                             "store, restore it from a copy or start a new run directory (merges already made "
                             "in its models/ folder are found again by content)") from exc
        except BaseException:
            self.close()
            raise

    def _migrate_as_reader(self) -> None:
        """A reader found an older schema (a kinmerge upgrade): migrate it under the run lock.

        No run can be going (a run migrates when it starts), so the lock is free unless an older
        kinmerge is running there; then say so.
        """
        assert self._conn is not None
        try:
            fd = run_lock.acquire(self.run_dir)
        except StoreError as exc:
            raise StoreError(f"{self.db_path} needs a schema upgrade, and {exc}") from None
        try:
            migrate(self._conn, self.db_path, apply=True)
        finally:
            run_lock.release(fd)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and release the run lock (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._lock_fd is not None:
            run_lock.release(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store at {self.db_path} is closed")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group writes into one transaction: all of them land, or none (nests; outermost wins).

        ``BEGIN IMMEDIATE`` takes the write lock up front, so a reader-turned-writer never
        deadlocks against another connection.
        """
        conn = self._connection()
        outer = self._depth == 0
        if outer:
            conn.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield conn
        except BaseException:
            self._depth -= 1
            if outer:
                conn.execute("ROLLBACK")
            raise
        self._depth -= 1
        if outer:
            try:
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
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
        return self._connection().execute(sql, params).fetchall()

    def applied_migrations(self) -> list[str]:
        """Names of the migrations applied to this store, in the order they were applied."""
        return applied(self._connection())

    # -- runs -----------------------------------------------------------------------------------

    def start_run(
        self, run_id: str, *, strategy: str, config: Mapping[str, Any], seed: int | None = None
    ) -> RunRecord:
        """Start a run, or resume it if it exists with the same strategy, config and seed.

        Raises:
            StoreError: the run exists with a different strategy, config or seed (resuming it
                under other settings would mix two experiments in one pool).
        """
        config_json = _dumps(dict(config))
        with self._write(f"start run {run_id!r}") as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:  # a new run only: a store from before 0003 may hold several bases, and resumes
                self._check_one_base(run_id, config.get("base"))
                conn.execute(
                    "INSERT INTO runs (id, strategy, config, seed, status, started) "
                    "VALUES (?, ?, ?, ?, 'running', ?)",
                    (run_id, strategy, config_json, seed, now()),
                )
            else:
                diffs = [name for name, old, new in (("strategy", row["strategy"], strategy),
                                                     ("config", row["config"], config_json),
                                                     ("seed", row["seed"], seed)) if old != new]
                if diffs:
                    raise StoreError(
                        f"run {run_id!r} in {self.run_dir} was started with a different "
                        f"{' and '.join(diffs)}; resume it with the same settings or use a new run id"
                    )
                conn.execute("UPDATE runs SET status = 'running', finished = NULL WHERE id = ?", (run_id,))
        run = self.get_run(run_id)
        assert run is not None
        return run

    def _check_one_base(self, run_id: str, base: object) -> None:
        """Refuse a run on another base than the store's other runs: every number a store keeps
        (kinship above all) is about deltas from one base, so one run directory holds one family."""
        if not base:
            return
        for run in self.runs():
            other = run.config.get("base")
            if run.id != run_id and other and other != base:
                raise StoreError(
                    f"{self.run_dir} holds run {run.id!r} on base {str(other)[:12]}; a run on base "
                    f"{str(base)[:12]} needs its own run directory (out.run_dir, or --run-dir)")

    def base_id(self) -> str | None:
        """The content id of the base every run of this store was started on (``None``: no run
        records one). A store holds one base (``start_run`` refuses a second)."""
        bases = {str(r.config["base"]) for r in self.runs() if r.config.get("base")}
        return next(iter(bases)) if len(bases) == 1 else None

    def update_run_config(self, run_id: str, config: Mapping[str, Any]) -> None:
        """Replace a run's stored config (the runner does so only for a change that continues the
        same experiment: a larger generation budget)."""
        with self._write(f"update the config of run {run_id!r}") as conn:
            conn.execute("UPDATE runs SET config = ? WHERE id = ?", (_dumps(dict(config)), run_id))

    def finish_run(self, run_id: str, status: RunStatus = "finished") -> None:
        """Mark a run finished, failed or interrupted (a later ``start_run`` can resume it)."""
        if status not in ("finished", "failed", "interrupted"):
            raise ValueError(f"a run ends as 'finished', 'failed' or 'interrupted', not {status!r}")
        with self._write(f"finish run {run_id!r}") as conn:
            cur = conn.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, now(), run_id))
            if cur.rowcount == 0:
                raise StoreError(f"no run {run_id!r} in {self.db_path}")

    def get_run(self, run_id: str) -> RunRecord | None:
        """The run's row, or ``None``.

        Raises:
            DamagedStoreError: its config is not a JSON object (or not a readable fingerprint).
        """
        rows = self._query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run_record(self.db_path, rows[0]) if rows else None

    def runs(self) -> list[RunRecord]:
        """Every run in the store, oldest first."""
        return [_run_record(self.db_path, r) for r in self._query("SELECT * FROM runs ORDER BY started, id")]

    def pick_run(self, run_id: str | None = None) -> RunRecord:
        """``run_id`` if the store has it; with ``None``, the latest started run.

        Raises:
            StoreError: the store has no runs, or not that one.
        """
        runs = self.runs()
        if not runs:
            raise StoreError(f"{self.db_path} holds no runs yet; start one with `kinmerge evolve CONFIG`")
        if run_id is None:
            return runs[-1]
        for run in runs:
            if run.id == run_id:
                return run
        raise StoreError(f"no run {run_id!r} in {self.db_path}; runs: {', '.join(r.id for r in runs)}")

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
                (model_id, None if path is None else str(path), origin, generation,
                 None if recipe is None else _dumps(dict(recipe)), now()),
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
            existing = self._parents_of_one(child)
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
                "INSERT OR IGNORE INTO pool (run_id, model_id, generation, added) VALUES (?, ?, ?, ?)",
                (run_id, model_id, generation, now()),
            )

    def drop_foundations(self, run_id: str, keep: Sequence[str]) -> list[str]:
        """Take the foundation models not in ``keep`` out of a run's pool (a run that has decided
        nothing yet and was restarted with other foundations); returns the ids dropped."""
        with self._write(f"update the foundations of run {run_id!r}") as conn:
            rows = conn.execute("SELECT model_id FROM pool WHERE run_id = ? AND generation = 0", (run_id,)).fetchall()
            gone = [r[0] for r in rows if r[0] not in set(keep)]
            conn.executemany("DELETE FROM pool WHERE run_id = ? AND model_id = ?", [(run_id, g) for g in gone])
        return gone

    def _parents_of_one(self, child: str) -> tuple[str, ...]:
        rows = self._query("SELECT parent FROM parents WHERE child = ? ORDER BY position", (child,))
        return tuple(r[0] for r in rows)

    def _parents_of(self, ids: Iterable[str] | None = None) -> dict[str, tuple[str, ...]]:
        wanted = None if ids is None else set(ids)
        out: dict[str, list[str]] = defaultdict(list)
        for r in self._query("SELECT child, parent FROM parents ORDER BY child, position"):
            if wanted is None or r["child"] in wanted:
                out[r["child"]].append(r["parent"])
        return {k: tuple(v) for k, v in out.items()}

    def get_model(self, model_id: str) -> ModelRecord | None:
        """A model with its parents, or ``None``."""
        rows = self._query("SELECT * FROM models WHERE id = ?", (model_id,))
        if not rows:
            return None
        record = _model_record(self.db_path, rows[0], self._parents_of_one(model_id))
        return replace(record, path=self.resolve_path(record.path))

    def resolve_path(self, path: str | None) -> str | None:
        """A recorded model path as a usable one. Paths inside the run directory are stored as
        ``./models/<id>``, relative to it, so a copied or moved run directory still works; they come
        back absolute. Other paths (and hub ids) come back as stored."""
        if path is not None and path.startswith(RELATIVE):
            return str(self.run_dir / path[len(RELATIVE):])
        return path

    def stored_path(self, path: str | os.PathLike[str]) -> str:
        """How :meth:`add_model` should record ``path``: relative (``./...``) inside the run directory."""
        p = Path(path)
        if p.is_absolute() and p.is_relative_to(self.run_dir.absolute()):
            return RELATIVE + p.relative_to(self.run_dir.absolute()).as_posix()
        return str(path)

    def find_model(self, ref: str) -> str:
        """A model id from an id or a unique prefix of one (as ``kinmerge status`` shows them).

        Raises:
            StoreError: no model, or several, match ``ref``.
        """
        if self.get_model(ref) is not None:
            return ref
        matches: list[str] = [r[0] for r in self._query(
            "SELECT id FROM models WHERE substr(id, 1, ?) = ? ORDER BY id", (len(ref), ref))]
        if len(matches) == 1:
            return str(matches[0])
        if not matches:
            raise StoreError(f"no model {ref!r} in {self.db_path}; `kinmerge status` lists the pool")
        raise StoreError(f"{ref!r} matches {len(matches)} models ({', '.join(m[:16] for m in matches[:4])}, ...); "
                         "give more characters")

    def lineage(self, model_id: str) -> LineageNode:
        """The family tree of a model: the model, its parents, theirs, ... down to foundations.

        A model reached along two paths (a shared ancestor) appears under each; it is read once.

        Raises:
            StoreError: the model is not in the store.

        Example:
            ``store.lineage(best).ancestors()`` is the set of every model it descends from.
        """
        models = {r["id"]: r for r in self._query("SELECT * FROM models")}
        parents = self._parents_of()
        if model_id not in models:
            raise StoreError(f"model {model_id!r} is not in the store at {self.db_path}")
        built: dict[str, LineageNode] = {}

        def build(mid: str, path: tuple[str, ...]) -> LineageNode:
            if mid in path:  # impossible with content ids; guards a hand-edited database
                raise StoreError(f"lineage cycle through model {mid!r} in {self.db_path}")
            if mid not in built:
                r = models[mid]
                built[mid] = LineageNode(
                    id=mid, origin=r["origin"], generation=r["generation"], path=self.resolve_path(r["path"]),
                    recipe=read_json(self.db_path, "models", mid[:8], "recipe", r["recipe"], kind=dict),
                    parents=tuple(build(p, (*path, mid)) for p in parents.get(mid, ())),
                )
            return built[mid]

        return build(model_id, ())

    # -- evaluations ----------------------------------------------------------------------------

    def record_evaluation(self, model_id: str, evaluator: str, task: str, score: float,
                          details: Mapping[str, Any] | None = None) -> None:
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
            (model_id, evaluator, task, _check_score(score, f"score of {model_id!r} on {task!r}"),
             None if details.get(task) is None else _dumps(details[task]), now())
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

    def resolve_evaluator(self, evaluator: str | None) -> str | None:
        """``evaluator``, else the only evaluator key recorded (``None`` if there is none).

        Raises:
            StoreError: ``evaluator`` omitted while several are recorded.
        """
        if evaluator is not None:
            return evaluator
        keys = self.evaluators()
        if len(keys) > 1:
            raise StoreError(
                f"{self.db_path} holds scores from several evaluators ({', '.join(keys)}); "
                "say which one to use (evaluator=...)"
            )
        return keys[0] if keys else None

    def get_scores(self, model_ids: Iterable[str] | None = None, *,
                   evaluator: str | None = None) -> dict[str, dict[str, float]]:
        """Task scores ``{model: {task: score}}`` of one evaluator.

        Args:
            model_ids: restrict to these models (default: all).
            evaluator: the evaluator key; may be omitted when the store holds only one.

        Raises:
            StoreError: ``evaluator`` omitted while several are recorded.
        """
        key = self.resolve_evaluator(evaluator)
        wanted = None if model_ids is None else set(model_ids)
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for r in self._query("SELECT model_id, task, score, details FROM evaluations WHERE evaluator = ?", (key,)):
            if wanted is None or r["model_id"] in wanted:
                out[r["model_id"]][r["task"]] = self._score(r)
        return dict(out)

    def _score(self, r: sqlite3.Row) -> float:
        """A stored task score, checked: a number, and in [0, 1] where its details say it is an
        accuracy (the evaluator protocol's primary score)."""
        where = f"model {r['model_id'][:8]}, task {r['task']!r}"
        details = read_json(self.db_path, "evaluations", where, "details", r["details"], kind=dict)
        accuracy = details is not None and any(k in details for k in ("accuracy", "acc", "acc_norm"))
        return read_number(self.db_path, "evaluations", where, "score", r["score"],
                           lo=0.0 if accuracy else None, hi=1.0 if accuracy else None)

    def examples_scored(self, model_ids: Iterable[str] | None = None, *,
                        evaluator: str | None = None) -> dict[str, int]:
        """Examples each model was scored on (the sum over tasks of each evaluation's ``n``), for
        models whose evaluations record it: the cost axis of evaluation-budget comparisons."""
        return {mid: sum(per_task.values())
                for mid, per_task in self.examples_by_task(model_ids, evaluator=evaluator).items()}

    def examples_by_task(self, model_ids: Iterable[str] | None = None, *,
                         evaluator: str | None = None) -> dict[str, dict[str, int]]:
        """``{model: {task: n}}``: how many examples each task score of a model averages over, for
        evaluations that record it (a score's resolution and standard error follow from ``n``)."""
        key = self.resolve_evaluator(evaluator)
        wanted = None if model_ids is None else set(model_ids)
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for r in self._query("SELECT model_id, task, details FROM evaluations WHERE evaluator = ?", (key,)):
            where = f"model {r['model_id'][:8]}, task {r['task']!r}"
            n = (read_json(self.db_path, "evaluations", where, "details", r["details"], kind=dict) or {}).get("n")
            if (wanted is None or r["model_id"] in wanted) and isinstance(n, (int, float)):
                out[r["model_id"]][r["task"]] = int(n)
        return dict(out)

    def average_scores(self, model_ids: Iterable[str] | None = None, *, evaluator: str | None = None,
                       partial: bool = False, fitness: Fitness | None = None) -> dict[str, float | None]:
        """Average task score ``P̄`` per model (paper §2), ``None`` if not fully evaluated.

        ``fitness``: the run's task weights (``Fitness.value``, the raw weighted mean; default the
        plain mean). Its direction is not applied here: these are the numbers reports show.

        The task set is every task recorded under the evaluator key; a model missing one of them
        gets ``None`` rather than a mean over fewer tasks, which would not be comparable.
        ``partial``: also accept scores on part of each task's examples (a racing run stopped
        scoring a child early); otherwise such a model counts as not yet scored.
        """
        key = self.resolve_evaluator(evaluator)
        raced = set() if partial else {r[0] for r in self._query(
            "SELECT DISTINCT model_id FROM evaluations WHERE evaluator = ? AND details LIKE ?",
            (key, '%"partial":true%'))}
        tasks = {r[0] for r in self._query("SELECT DISTINCT task FROM evaluations WHERE evaluator = ?", (key,))}
        scores = self.get_scores(model_ids, evaluator=key) if key is not None else {}
        ids = set(scores) if model_ids is None else set(model_ids)
        out: dict[str, float | None] = {}
        for mid in sorted(ids):
            s = scores.get(mid, {})
            if not (tasks and set(s) == tasks and mid not in raced):
                out[mid] = None
            else:
                out[mid] = math.fsum(s.values()) / len(s) if fitness is None else fitness.value(s)
        return out

    # -- kinship --------------------------------------------------------------------------------

    def record_kinship(self, a: str, b: str, metric: str, value: float, *, scope: str = "global",
                       base: str | None = None, source: str = "exact") -> None:
        """Record one kinship value (pair order does not matter; upsert)."""
        self.record_kinships({(a, b): value}, metric, scope=scope, base=base, source=source)

    def record_kinships(self, values: Mapping[tuple[str, str] | frozenset[str], float], metric: str, *,
                        scope: str = "global", base: str | None = None, source: str = "exact",
                        bounds: Mapping[tuple[str, str] | frozenset[str], float] | None = None) -> None:
        """Record many kinship values of one metric in one transaction (a scan's output).

        A value is keyed by everything it depends on: the base its deltas are taken from, the
        pair, the metric, the scope and how it was computed, so runs on other bases or sources
        never read each other's numbers.

        Args:
            values: ``{(a, b): value}`` or ``{pair(a, b): value}``.
            metric: ``"pcc"``, ``"cs"`` or ``"ed"``.
            scope: ``"global"`` for the paper's whole-vector kinship, or a label for a
                breakdown (e.g. ``"layer:3"``), which is never mixed with the global value.
            base: the base's content id; default the base of the store's runs (:meth:`base_id`).
            source: ``"exact"`` (a scan) or ``"sketch"`` (an estimate from sketches).
            bounds: each estimate's 99% bound (a half-width, keyed like ``values``), so the store
                can say how far off it may be; only with ``source="sketch"``.

        Raises:
            ValueError: a value or bound is not finite, a bound is negative, or bounds are given
                for exact values (an exact value has none).
        """
        check_metric(metric)
        key_base, source = self._kinship_key(base, source)
        if bounds and source != "sketch":
            raise ValueError(f"only estimates (source 'sketch') carry a bound, not {source!r} values")
        rows = []
        for key, value in values.items():
            a, b = _canonical(*sorted(key)) if isinstance(key, frozenset) else _canonical(*key)
            bound = None if bounds is None or key not in bounds else _check_score(bounds[key], f"bound of {a!r}, {b!r}")
            if bound is not None and bound < 0:
                raise ValueError(f"bound of {a!r}, {b!r} must be >= 0, got {bound!r}")
            rows.append((key_base, a, b, metric, scope, source, _check_score(value, f"kinship of {a!r}, {b!r}"),
                         bound, now()))
        with self._write(f"record {metric} kinship") as conn:
            conn.executemany(
                "INSERT INTO kinship (base, model_a, model_b, metric, scope, source, value, bound, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (base, model_a, model_b, metric, scope, source) DO UPDATE SET "
                "value = excluded.value, bound = excluded.bound, created = excluded.created",
                rows,
            )

    def get_kinship(self, metric: str = "pcc", *, model_ids: Iterable[str] | None = None,
                    scope: str = "global", base: str | None = None,
                    source: str | None = None) -> dict[frozenset[str], float]:
        """Kinship values ``{pair(a, b): value}`` of one metric and scope, on one base and source.

        Args:
            model_ids: only pairs with both models in this set (default: all pairs).
            base: the base's content id; default the base of the store's runs.
            source: ``"exact"`` or ``"sketch"``; default the source of the store's runs when they
                all share one, else ``"exact"``.

        Raises:
            DamagedStoreError: a stored value is not a number in its metric's range.
        """
        check_metric(metric)
        key_base, key_source = self._kinship_key(base, source)
        wanted = None if model_ids is None else set(model_ids)
        lo, hi = (0.0, None) if metric == "ed" else (-1.0 - 1e-9, 1.0 + 1e-9)
        out: dict[frozenset[str], float] = {}
        for r in self._query("SELECT model_a, model_b, value FROM kinship "
                             "WHERE metric = ? AND scope = ? AND base = ? AND source = ?",
                             (metric, scope, key_base, key_source)):
            if wanted is None or (r["model_a"] in wanted and r["model_b"] in wanted):
                row = f"{r['model_a'][:8]}-{r['model_b'][:8]} {metric}"
                out[frozenset((r["model_a"], r["model_b"]))] = read_number(
                    self.db_path, "kinship", row, "value", r["value"], lo=lo, hi=hi)
        return out

    def get_kinship_bounds(self, metric: str = "pcc", *, model_ids: Iterable[str] | None = None,
                           scope: str = "global", base: str | None = None) -> dict[frozenset[str], float]:
        """The 99% bound ``{pair(a, b): bound}`` of each stored estimate (source ``sketch``).

        An estimate recorded before bounds were kept (migration ``0004_kinship_bounds``) has an
        unknown bound: ``math.inf`` here, so nothing treats it as sure.

        Raises:
            DamagedStoreError: a stored bound is not a number >= 0.
        """
        check_metric(metric)
        key_base, _ = self._kinship_key(base, "sketch")
        wanted = None if model_ids is None else set(model_ids)
        out: dict[frozenset[str], float] = {}
        for r in self._query("SELECT model_a, model_b, bound FROM kinship "
                             "WHERE metric = ? AND scope = ? AND base = ? AND source = 'sketch'",
                             (metric, scope, key_base)):
            if wanted is None or (r["model_a"] in wanted and r["model_b"] in wanted):
                row = f"{r['model_a'][:8]}-{r['model_b'][:8]} {metric}"
                out[frozenset((r["model_a"], r["model_b"]))] = math.inf if r["bound"] is None else read_number(
                    self.db_path, "kinship", row, "bound", r["bound"], lo=0.0, hi=None)
        return out

    def kinship_of_run(self, run_id: str, metric: str = "pcc", *, model_ids: Iterable[str] | None = None,
                       scope: str = "global") -> tuple[dict[frozenset[str], float], dict[frozenset[str], float]]:
        """The kinship run ``run_id`` decides with, and the bound of each value that is an estimate.

        An exact run reads its exact values (no bounds). A ``kinship_source: sketch`` run reads its
        estimates, except where an exact value of the pair on the same base is stored (a decision
        an estimate could have flipped was re-checked exactly): the exact value replaces the
        estimate and has no bound.

        Returns:
            ``(values, bounds)``: ``{pair: value}`` and ``{pair: 99% bound}`` for the estimates.

        Example:
            ``values, bounds = store.kinship_of_run("r1")``; ``bounds.get(pair(a, b))`` is ``None``
            for an exact value.
        """
        base, source = self.kinship_key(run_id)
        ids = None if model_ids is None else set(model_ids)
        values = self.get_kinship(metric, model_ids=ids, scope=scope, base=base, source=source)
        if source != "sketch":
            return values, {}
        bounds = self.get_kinship_bounds(metric, model_ids=ids, scope=scope, base=base)
        exact = self.get_kinship(metric, model_ids=ids, scope=scope, base=base, source="exact")
        values.update(exact)
        return values, {p: b for p, b in bounds.items() if p not in exact and p in values}

    def kinship_key(self, run_id: str) -> tuple[str | None, str | None]:
        """The (base, source) the kinship of run ``run_id`` is keyed by, from its settings
        (``None`` for what a hand-recorded run does not say: the store's default then)."""
        run = self.get_run(run_id)
        config = run.config if run is not None else {}
        base = config.get("base")
        return (str(base) if base else None), str(config.get("kinship_source") or "exact")

    def _kinship_key(self, base: str | None, source: str | None) -> tuple[str, str]:
        """The (base, source) a kinship value is recorded under or looked up by."""
        if source is not None and source not in KINSHIP_SOURCES:
            raise ValueError(f"kinship source must be one of {', '.join(KINSHIP_SOURCES)}, got {source!r}")
        if base is None or source is None:
            runs = self.runs()
            if base is None:
                base = self.base_id() or ""
            if source is None:
                sources = {str(r.config.get("kinship_source") or "exact") for r in runs}
                source = next(iter(sources)) if len(sources) == 1 and sources <= set(KINSHIP_SOURCES) else "exact"
        return base, source

    # -- plans ----------------------------------------------------------------------------------

    def save_plan(self, run_id: str, plan: Plan, *, after: int | None = None) -> Plan:
        """Save a generation's plan *before* executing it; returns the plan stored.

        Idempotent: saving the same plan again is a no-op. A stop plan is saved as done (it has
        nothing to execute) and records why the run ended. ``after``: in a steady-state run, how
        many children had finished when the plan was made (:meth:`plan_afters`).

        Raises:
            StoreError: a different plan is already stored for that generation (a resumed run
                must execute the saved plan, not a new one), or the plan is a kinship request.
        """
        if plan.kinship_requests:
            raise StoreError("a plan that requests kinship is not a decision; compute the kinship and plan again")
        with self._write(f"save the plan of generation {plan.generation}") as conn:
            stored = self.get_plan(run_id, plan.generation)
            if stored is not None:
                if stored != plan:
                    raise StoreError(
                        f"run {run_id!r} already has a different plan for generation "
                        f"{plan.generation}; a resumed run executes the saved plan (get_plan)"
                    )
                return stored
            conn.execute(
                "INSERT INTO plans (run_id, generation, plan, stop, status, created, finished, after_completions) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, plan.generation, _dumps(plan.to_dict()), plan.stop,
                 "done" if plan.stop else "planned", now(), now() if plan.stop else None, after),
            )
        return plan

    def get_plan(self, run_id: str, generation: int) -> Plan | None:
        """The saved plan of a generation, or ``None``."""
        return self.plans(run_id).get(generation, (None, ""))[0]

    def plan_status(self, run_id: str, generation: int) -> str | None:
        """``"planned"``, ``"done"`` or ``None`` (no plan saved)."""
        return self.plans(run_id).get(generation, (None, None))[1]

    def plans(self, run_id: str) -> dict[int, tuple[Plan, str]]:
        """Every saved plan of a run: ``{generation: (plan, "planned" | "done")}``."""
        rows = self._query("SELECT generation, plan, status FROM plans WHERE run_id = ? ORDER BY generation",
                           (run_id,))
        return {r["generation"]: (self._plan(run_id, r), r["status"]) for r in rows}

    def _plan(self, run_id: str, r: sqlite3.Row) -> Plan:
        where = f"run {run_id!r} generation {r['generation']}"
        data = read_json(self.db_path, "plans", where, "plan", r["plan"], kind=dict)
        try:
            plan = Plan.from_dict(data)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise damaged(self.db_path, "plans", where, f"plan is not a saved plan ({type(exc).__name__}: {exc})") \
                from None
        if plan.generation != r["generation"]:
            raise damaged(self.db_path, "plans", where, f"plan says generation {plan.generation}")
        return plan

    def plan_afters(self, run_id: str) -> dict[int, int]:
        """A steady-state run's plans: ``{generation: completions it was made after}`` (plans of a
        generational run have none)."""
        rows = self._query("SELECT generation, after_completions FROM plans WHERE run_id = ? "
                           "AND after_completions IS NOT NULL ORDER BY generation", (run_id,))
        return {int(r[0]): int(r[1]) for r in rows}

    def record_completion(self, run_id: str, model_id: str) -> int:
        """Record that a child of a steady-state run finished (merged and scored): its completion
        number in the run, 1 for the first. Idempotent: a child keeps its first number."""
        with self._write(f"record the completion of {model_id!r}") as conn:
            row = conn.execute("SELECT completed FROM pool WHERE run_id = ? AND model_id = ?",
                               (run_id, model_id)).fetchone()
            if row is None:
                raise StoreError(f"model {model_id!r} is not in the pool of run {run_id!r}")
            if row[0] is not None:
                return int(row[0])
            seq = int(conn.execute("SELECT coalesce(max(completed), 0) + 1 FROM pool WHERE run_id = ?",
                                   (run_id,)).fetchone()[0])
            conn.execute("UPDATE pool SET completed = ? WHERE run_id = ? AND model_id = ?", (seq, run_id, model_id))
        return seq

    def completions(self, run_id: str) -> list[str]:
        """The children of a steady-state run in the order they finished (:meth:`record_completion`)."""
        rows = self._query("SELECT model_id FROM pool WHERE run_id = ? AND completed IS NOT NULL "
                           "ORDER BY completed", (run_id,))
        return [str(r[0]) for r in rows]

    def discard_stop(self, run_id: str, reason: str) -> int | None:
        """Forget a saved stop decision made for ``reason`` (e.g. the generation budget after the
        budget was raised); returns its generation, or ``None`` if there was none."""
        with self._write(f"reopen run {run_id!r}") as conn:
            row = conn.execute("SELECT generation FROM plans WHERE run_id = ? AND stop = ?",
                               (run_id, reason)).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM plans WHERE run_id = ? AND generation = ?", (run_id, row[0]))
            return int(row[0])

    def reopen_plan(self, run_id: str, generation: int) -> None:
        """Mark a done generation as planned again: its steps run again on the next resume (they
        are idempotent: what exists is reused, what is missing is made)."""
        with self._write(f"reopen generation {generation} of run {run_id!r}") as conn:
            conn.execute("UPDATE plans SET status = 'planned', finished = NULL "
                         "WHERE run_id = ? AND generation = ? AND stop IS NULL", (run_id, generation))

    def pending_plan(self, run_id: str) -> Plan | None:
        """The saved plan not yet done (what a resumed run must finish first), or ``None``."""
        return next((p for p, status in self.plans(run_id).values() if status == "planned"), None)

    def mark_plan_done(self, run_id: str, generation: int) -> None:
        """Mark a generation complete: every merge made, evaluated and recorded (idempotent)."""
        with self._write(f"mark generation {generation} done") as conn:
            status = self.plan_status(run_id, generation)
            if status is None:
                raise StoreError(f"run {run_id!r} has no plan for generation {generation}")
            if status != "done":
                conn.execute("UPDATE plans SET status = 'done', finished = ? WHERE run_id = ? AND generation = ?",
                             (now(), run_id, generation))

    def last_completed_generation(self, run_id: str) -> int:
        """The last generation whose plan (with merges) is done; 0 = only foundation models."""
        done = [g for g, (p, status) in self.plans(run_id).items() if status == "done" and p.stop is None]
        return max(done, default=0)

    def stop_reason(self, run_id: str) -> str | None:
        """Why the run stopped (its saved stop plan), or ``None`` if it has not."""
        stops = [p.stop for _, (p, _status) in sorted(self.plans(run_id).items()) if p.stop is not None]
        return stops[-1] if stops else None

    # -- events ---------------------------------------------------------------------------------

    def log_event(self, run_id: str | None, kind: str, message: str, *, generation: int | None = None,
                  duration_s: float | None = None, payload: Mapping[str, Any] | None = None) -> int:
        """Append one step to the run's log; returns the event id.

        Example:
            ``store.log_event("r1", "merge", "merged a+b", generation=1, duration_s=12.5)``
        """
        text, ts = None if payload is None else _dumps(dict(payload)), now()
        with self._write(f"log event {kind!r}") as conn:
            cur = conn.execute(
                "INSERT INTO events (run_id, ts, generation, kind, message, duration_s, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, ts, generation, kind, message, duration_s, text),
            )
        event_id = int(cur.lastrowid or 0)
        if self.listeners and self._depth == 0:  # inside a transaction it might still roll back: not told
            event = Event(id=event_id, run_id=run_id, ts=ts, generation=generation, kind=kind, message=message,
                          duration_s=duration_s, payload=None if text is None else json.loads(text))
            for listener in list(self.listeners):
                listener(event)
        return event_id

    @contextmanager
    def timed(self, run_id: str | None, kind: str, message: str, *,
              generation: int | None = None) -> Iterator[dict[str, Any]]:
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

    def events(self, run_id: str | None = None, *, kind: str | None = None, after: int = 0) -> list[Event]:
        """The step log, oldest first, optionally for one run and/or one kind; ``after``: only the
        events logged after the one with that id (what a follower of the log has not seen)."""
        sql, params = "SELECT * FROM events WHERE id > ?", list[Any]([after])
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return [Event(id=r["id"], run_id=r["run_id"], ts=r["ts"], generation=r["generation"], kind=r["kind"],
                      message=r["message"], duration_s=r["duration_s"],
                      payload=read_json(self.db_path, "events", str(r["id"]), "payload", r["payload"], kind=dict))
                for r in self._query(sql + " ORDER BY id", params)]

    # -- the pool -------------------------------------------------------------------------------

    def pool(self, run_id: str, *, evaluator: str | None = None, generation: int | None = None,
             partial: bool = False, fitness: Fitness | None = None) -> tuple[PoolModel, ...]:
        """A run's pool, scored: every member (by generation joined, then id) with its average
        score, task scores, parents and path. ``generation``: only members that joined by then.
        ``fitness``: the scores are its weighted means (:meth:`average_scores`), raw.

        Raises:
            StoreError: ``evaluator`` omitted while several are recorded.
        """
        rows = self._query(
            "SELECT p.model_id AS id, p.generation AS generation, m.path AS path FROM pool p "
            "JOIN models m ON m.id = p.model_id WHERE p.run_id = ? ORDER BY p.generation, p.model_id",
            (run_id,),
        )
        rows = [r for r in rows if generation is None or r["generation"] <= generation]
        ids = [r["id"] for r in rows]
        key = self.resolve_evaluator(evaluator)
        scores = self.average_scores(ids, evaluator=key, partial=partial, fitness=fitness) if key is not None else {}
        tasks = self.get_scores(ids, evaluator=key) if key is not None else {}
        parents = self._parents_of(ids)
        return tuple(PoolModel(r["id"], r["generation"], parents.get(r["id"], ()), scores.get(r["id"]),
                               path=self.resolve_path(r["path"]), task_scores=tasks.get(r["id"], {}))
                     for r in rows)

    def merged_pairs(self, run_id: str) -> frozenset[frozenset[str]]:
        """Every pair in any saved plan of the run (done or pending): never planned twice."""
        return frozenset(m.pair for plan, _ in self.plans(run_id).values() for m in plan.merges)

    def pool_state(self, run_id: str, *, evaluator: str | None = None, metric: str = "pcc",
                   scope: str = "global", partial: bool = False, fitness: Fitness | None = None) -> PoolState:
        """The run's pool after its last completed generation, as the strategies see it.

        - models: the pool members from generations ``<=`` the last completed one, with their
          average score (``None`` if not fully evaluated: the strategy will refuse to rank it);
          with a ``fitness``, its ranking key (``Fitness.key`` of the weighted mean: higher is
          better whatever the direction, so no strategy knows about directions);
        - kinship: the stored ``metric``/``scope`` values among those models
          (:meth:`kinship_of_run`), with ``kinship_bounds`` for those that are estimates;
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
        models = self.pool(run_id, evaluator=evaluator, generation=generation, partial=partial, fitness=fitness)
        kinship, bounds = self.kinship_of_run(run_id, metric, model_ids=[m.id for m in models], scope=scope)
        return PoolState(
            models=tuple(PoolModel(m.id, m.generation, m.parents,
                                   m.score if fitness is None or m.score is None else fitness.key(m.score))
                         for m in models),
            kinship=kinship,
            kinship_bounds=bounds,
            merged_pairs=self.merged_pairs(run_id)
            | {frozenset(m.parents) for m in models if len(set(m.parents)) == 2},
            generation=generation,
            kinship_metric=metric,
        )


def first_missing(path: str | os.PathLike[str]) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (what creating it would make)."""
    path = Path(path).absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def discard_unused_store(run_dir: str | os.PathLike[str], *, created: Path | None) -> bool:
    """Remove a store that records no run (a run that failed before it started: an unreachable
    cluster, a model that does not fit), so a failed start leaves nothing half-made behind.

    Only what kinmerge writes there goes: the database (with its WAL files), the lock, an empty
    ``models/`` folder, and the folders this call's run created (``created``: the topmost, see
    :func:`first_missing`) if they are empty now. Returns whether the store was removed.
    """
    run_dir = Path(run_dir)
    db = run_dir / DB_NAME
    if not db.is_file() or run_lock.is_locked(run_dir):
        return False
    try:
        conn = sqlite3.connect(db, isolation_level=None, timeout=5.0)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            used = "runs" not in tables or conn.execute("SELECT count(*) FROM runs").fetchone()[0] > 0
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False
    if used:
        return False
    for name in (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", run_lock.LOCK_NAME):
        (run_dir / name).unlink(missing_ok=True)
    folders = [run_dir / "models"]
    if created is not None:
        here = run_dir.absolute()
        while here.is_relative_to(created):
            folders.append(here)
            here = here.parent
    for folder in folders:
        with contextlib.suppress(OSError):  # only if empty
            folder.rmdir()
    return True


def _run_record(db: Path, r: sqlite3.Row) -> RunRecord:
    where = repr(r["id"])
    record = RunRecord(id=r["id"], strategy=r["strategy"],
                       config=read_json(db, "runs", where, "config", r["config"], kind=dict), seed=r["seed"],
                       status=r["status"], started=r["started"], finished=r["finished"])
    try:  # a fingerprint with fields of the wrong type would fail later, far from here
        fp = record.fingerprint
    except (TypeError, ValueError, AttributeError) as exc:
        raise damaged(db, "runs", where, f"config is not a run's settings ({type(exc).__name__}: {exc})") from None
    if fp is not None and not (isinstance(record.config.get("foundation", []), list)
                               and isinstance(record.config.get("strategy"), dict)
                               and all(isinstance(f, str) for f in fp.foundation)):
        raise damaged(db, "runs", where, "config is not a run's settings (foundation or strategy of the wrong type)")
    return record


def _model_record(db: Path, r: sqlite3.Row, parents: tuple[str, ...]) -> ModelRecord:
    return ModelRecord(id=r["id"], path=r["path"], origin=r["origin"], generation=r["generation"],
                       recipe=read_json(db, "models", r["id"][:8], "recipe", r["recipe"], kind=dict),
                       created=r["created"], parents=parents)

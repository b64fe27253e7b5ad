"""The run store's schema: named migrations, applied in order, each recorded once.

Schema history is data (sqlite-utils style): ``MIGRATIONS`` lists every change ever made, the
``migrations`` table records which ones a file has, and :func:`migrate` applies the rest inside
one write transaction. A store that records a migration this code does not know was written by a
newer kinmerge and is refused rather than misread. Never edit a released migration: add one.

Example:
    >>> import sqlite3
    >>> conn = sqlite3.connect(":memory:", isolation_level=None)
    >>> migrate(conn, "memory", apply=True)
    >>> applied(conn)[0], applied(conn) == [m.name for m in MIGRATIONS]   # all of them, in order
    ('0001_initial', True)
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime

from kinmerge.errors import StoreError

__all__ = ["KINSHIP_SOURCES", "MIGRATIONS", "Migration", "applied", "migrate", "now", "pending_migrations"]


@dataclass(frozen=True)
class Migration:
    """One schema change. Never edit a released migration: add a new one after it.

    ``rebuilds``: the migration rebuilds a table (SQLite cannot alter a CHECK constraint in
    place), so foreign keys are switched off while it runs and checked before it commits.
    """

    name: str
    statements: tuple[str, ...]
    rebuilds: bool = False


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
                plan TEXT NOT NULL,               -- JSON: pool.Plan.to_dict()
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
    Migration(
        "0002_interrupted_runs",
        (
            # A run stopped by Ctrl-C (or SIGTERM) is neither finished nor failed: it resumes.
            """CREATE TABLE runs_new (
                id TEXT PRIMARY KEY,
                strategy TEXT NOT NULL,
                config TEXT NOT NULL,
                seed INTEGER,
                status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'interrupted')),
                started TEXT NOT NULL,
                finished TEXT
            )""",
            "INSERT INTO runs_new (id, strategy, config, seed, status, started, finished) "
            "SELECT id, strategy, config, seed, status, started, finished FROM runs",
            "DROP TABLE runs",
            "ALTER TABLE runs_new RENAME TO runs",
        ),
        rebuilds=True,
    ),
    Migration(
        "0003_kinship_keyed_by_base",
        (
            # A kinship value depends on the base the deltas are taken from and on how it was
            # computed (an exact scan or a sketch estimate), not only on the pair: keyed by all of
            # them, two runs on other bases (or sources) never read each other's numbers. Rows
            # from before get the base and source of the store's runs when all runs share one;
            # otherwise '' / 'unknown', which no run asks for (they are computed again).
            """CREATE TABLE kinship_new (
                base TEXT NOT NULL,               -- content id of the base ('' = not known)
                model_a TEXT NOT NULL REFERENCES models(id),
                model_b TEXT NOT NULL REFERENCES models(id),
                metric TEXT NOT NULL CHECK (metric IN ('pcc', 'cs', 'ed')),
                scope TEXT NOT NULL DEFAULT 'global',
                source TEXT NOT NULL CHECK (source IN ('exact', 'sketch', 'unknown')),
                value REAL NOT NULL,
                created TEXT NOT NULL,
                PRIMARY KEY (base, model_a, model_b, metric, scope, source),
                CHECK (model_a < model_b)
            )""",
            """INSERT INTO kinship_new (base, model_a, model_b, metric, scope, source, value, created)
               SELECT
                 coalesce((SELECT CASE WHEN count(*) > 0 AND count(b) = count(*) AND count(DISTINCT b) = 1
                                       THEN max(b) END
                           FROM (SELECT CASE WHEN json_valid(config) THEN json_extract(config, '$.base') END AS b
                                 FROM runs)), ''),
                 model_a, model_b, metric, scope,
                 coalesce((SELECT CASE WHEN count(*) = 0 THEN 'exact'
                                       WHEN count(s) = count(*) AND count(DISTINCT s) = 1
                                            AND max(s) IN ('exact', 'sketch') THEN max(s) END
                           FROM (SELECT CASE WHEN json_valid(config)
                                             THEN coalesce(json_extract(config, '$.kinship_source'), 'exact') END AS s
                                 FROM runs)), 'unknown'),
                 value, created
               FROM kinship""",
            "DROP TABLE kinship",
            "ALTER TABLE kinship_new RENAME TO kinship",
            "CREATE INDEX kinship_b ON kinship(model_b)",
        ),
        rebuilds=True,
    ),
    Migration(
        "0004_kinship_bounds",
        (
            # An estimate from sketches comes with its 99% bound (a half-width): kept beside the
            # value, the store can tell an estimate from an exact value and say how far off it may
            # be. NULL for exact values, and for estimates recorded before this migration (their
            # bound is unknown: a run treats them as possibly anywhere and re-checks a decision
            # they take part in). Added in place: no rebuild, old rows keep their bytes.
            "ALTER TABLE kinship ADD COLUMN bound REAL "
            "CHECK (bound IS NULL OR (bound >= 0 AND source = 'sketch'))",
        ),
    ),
    Migration(
        "0005_steady_completions",
        (
            # A steady-state run (``schedule: steady``, kinmerge.evolve.steady) has no barrier
            # between generations: its plans depend on the order in which children finished. So
            # each finished child's pool row gets its completion number in the run (1, 2, ...),
            # and each plan the number of completions it was made after; a resumed run replays
            # them in that order. NULL in a generational run. Added in place: old rows unchanged.
            "ALTER TABLE pool ADD COLUMN completed INTEGER CHECK (completed IS NULL OR completed >= 1)",
            "CREATE UNIQUE INDEX pool_completed ON pool(run_id, completed) WHERE completed IS NOT NULL",
            "ALTER TABLE plans ADD COLUMN after_completions INTEGER "
            "CHECK (after_completions IS NULL OR after_completions >= 0)",
        ),
    ),
)

#: How a kinship value was computed: an exact scan, or an estimate from sketches.
KINSHIP_SOURCES = ("exact", "sketch")

_MIGRATIONS_TABLE = """CREATE TABLE IF NOT EXISTS migrations (
    name TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL
)"""


def now() -> str:
    """The current time as the store writes it: ISO 8601, UTC, microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations applied to this database, in the order they were applied."""
    return [r[0] for r in conn.execute("SELECT name FROM migrations ORDER BY rowid")]


def pending_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the known migrations this database lacks (all of them for an empty file)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    done = set(applied(conn)) if "migrations" in tables else set()
    return [m.name for m in MIGRATIONS if m.name not in done]


def migrate(conn: sqlite3.Connection, where: object, *, apply: bool) -> None:
    """Bring the database on ``conn`` to the current schema, or check that it is there.

    Args:
        where: the file, for messages.
        apply: apply pending migrations (only the run lock's holder may); without it a store
            that needs them is refused.

    Raises:
        StoreError: not a kinmerge store, written by a newer kinmerge, or pending migrations
            while ``apply`` is False.
    """
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and "migrations" not in tables:
        raise StoreError(
            f"{where} is an SQLite file but not a kinmerge store (no migrations table); "
            "use another run directory"
        )
    done = applied(conn) if tables else []
    known = [m.name for m in MIGRATIONS]
    unknown = [n for n in done if n not in known]
    if unknown:
        raise StoreError(
            f"{where} was written by a newer kinmerge (unknown schema migrations: "
            f"{', '.join(unknown)}); upgrade kinmerge to open it"
        )
    pending = [m for m in MIGRATIONS if m.name not in done]
    if not pending:
        return
    if not apply:
        raise StoreError(
            f"{where} needs schema migrations ({', '.join(m.name for m in pending)}); "
            "open it with the run lock (no run active) to apply them"
        )
    rebuilds = any(m.rebuilds for m in pending)
    if rebuilds:  # only takes effect outside a transaction
        conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_MIGRATIONS_TABLE)
        # Re-read inside the write transaction: another opener may have migrated meanwhile.
        done_now = {r[0] for r in conn.execute("SELECT name FROM migrations")}
        for m in MIGRATIONS:
            if m.name in done_now:
                continue
            for statement in m.statements:
                conn.execute(statement)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (m.name, now()))
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise StoreError(f"{where}: migrating would break {len(broken)} reference(s) between tables; "
                             "the store is damaged — restore it from a copy or use another run directory")
    except BaseException:
        conn.execute("ROLLBACK")
        if rebuilds:
            conn.execute("PRAGMA foreign_keys = ON")
        raise
    conn.execute("COMMIT")
    if rebuilds:
        conn.execute("PRAGMA foreign_keys = ON")

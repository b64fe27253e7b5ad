"""The run store: one SQLite file per run directory (``RUN_DIR/kinmerge.db``), its schema and lock.

- :mod:`~kinmerge.store.db`: :class:`RunStore`, the connection, reads and writes;
- :mod:`~kinmerge.store.schema`: the named migrations;
- :mod:`~kinmerge.store.lock`: the run lock (``is_locked`` tells whether a run is going);
- :mod:`~kinmerge.store.records`: the rows it returns besides pool data;
- :mod:`~kinmerge.store.integrity`: what a done generation promised and the records lack;
- :mod:`~kinmerge.store.backup`: a consistent copy of a store while a run writes to it.

The store speaks the pool's vocabulary (:mod:`kinmerge.pool`) and never imports the evolution
loop or the reports above it.

Example:
    >>> import tempfile
    >>> with RunStore(tempfile.mkdtemp()) as store:
    ...     store.applied_migrations() == [m.name for m in MIGRATIONS]   # a new store has every migration
    True
"""

from __future__ import annotations

from kinmerge.store.backup import copy_store
from kinmerge.store.db import DB_NAME, RunStore, discard_unused_store, first_missing
from kinmerge.store.integrity import Problem, check_run
from kinmerge.store.lock import LOCK_NAME, is_locked
from kinmerge.store.records import Event, LineageNode, RunRecord, RunStatus
from kinmerge.store.schema import MIGRATIONS, Migration

__all__ = ["DB_NAME", "LOCK_NAME", "MIGRATIONS", "Event", "LineageNode", "Migration", "Problem", "RunRecord",
           "RunStatus", "RunStore", "check_run", "copy_store", "discard_unused_store", "first_missing",
           "is_locked"]

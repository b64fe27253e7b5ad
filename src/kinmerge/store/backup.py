"""A consistent copy of a store, taken while a run may be writing to it.

``evolve --dry-run`` plans on a copy so that the run directory is left untouched, and a copy is
what to read from another machine (SQLite's WAL mode does not support readers on other hosts of
a network file system while the driver writes; docs/distributed.md).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from kinmerge.store.db import DB_NAME

__all__ = ["copy_store"]


def copy_store(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> bool:
    """Copy ``run_dir``'s store into the folder ``dest`` with SQLite's online backup (WAL-safe).

    Returns:
        False when ``run_dir`` has no store (nothing copied), else True.
    """
    db = Path(run_dir) / DB_NAME
    if not db.exists():
        return False
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dst = sqlite3.connect(Path(dest) / DB_NAME)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return True

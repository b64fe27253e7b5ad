"""``kinship_source: sketch``: the evolution loop's kinship answered from sketches, not scans.

With the exact source, every kinship request of a strategy is a scan of the base and the models
of the pairs it asks about: parents are read again at every generation. With ``sketch``, every
model is sketched once, the first time a kinship involving it is wanted (foundations in one
pass, each generation's children together at the next plan, while their files are still in the
page cache), into ``<run_dir>/sketches.kmi`` (a ``kinmerge index``), and every pair after that
is an estimate from two sketches (``kinmerge.sketch.estimate_matrix``): nothing is read again.
The estimates are recorded in the store with their 99% bounds (source ``sketch``); the run's
fingerprint carries the source. A decision an estimate could flip is re-checked with an exact
scan (:mod:`kinmerge.evolve.recheck`), recorded with source ``exact``.

The result has :func:`kinmerge.evolve.steps.run_kinship`'s shape, so the runner records it the
same way.

Example:
    >>> # not run here: needs a run directory whose models have ids (tests/test_index.py)
    >>> source = SketchKinship("zoo:base", Path("runs/r"))                  # doctest: +SKIP
    >>> source.values(["id-a", "id-b"], {"id-a": "...", "id-b": "..."}.get)  # doctest: +SKIP
    {'values': {'pcc': [[0, 1, 0.012]], ...}, 'undefined': {...}, 'bytes_read': ..., ...}
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kinmerge.index import Index
from kinmerge.index.api import IndexMismatchError
from kinmerge.kinship import METRICS
from kinmerge.sketch import DEFAULT_SEED, estimate_matrix

__all__ = ["INDEX_FILE", "SketchKinship"]

INDEX_FILE = "sketches.kmi"


class SketchKinship:
    """Kinship of a run's models from their sketches (one index file per run directory)."""

    def __init__(self, base: str, run_dir: Path) -> None:
        self.base = base
        self.path = Path(run_dir) / INDEX_FILE

    def values(self, models: Sequence[str], path_of: Callable[[str], str], *, base_id: str | None = None
               ) -> dict[str, Any]:
        """Every pair of ``models`` (store ids) under every metric; sketches models not yet indexed.

        ``base_id``: the run's base content id; an index made from another base (or with another
        sketch seed) is refused, never read as this base's numbers.

        Returns:
            ``run_kinship``'s shape: ``values``, ``undefined`` (``[i, j, ...]`` indexing
            ``models``), ``seconds``, ``bytes_read`` (files read to sketch new models), ``notes``,
            plus ``sketched`` (models sketched now) and ``bounds`` (each value's 99% bound).
        """
        start = time.perf_counter()
        with Index(self.path) as idx:
            self._check_key(idx.meta, base_id)
            present = idx.file.ids()
            todo = [m for m in dict.fromkeys(models) if m not in present]
            added = idx.add([path_of(m) for m in todo], base=None if idx.meta else self.base, ids=todo,
                            max_delta=None) if todo else None
            self._check_key(idx.meta, base_id)
            sketches = [idx.sketch(m) for m in models]
        out: dict[str, Any] = {"values": {m: [] for m in METRICS}, "undefined": {m: [] for m in METRICS},
                               "bounds": {m: [] for m in METRICS}, "sketched": len(todo),
                               "bytes_read": added.bytes_read if added else 0,
                               "notes": list(added.notes) if added else []}
        for metric in METRICS:
            v, b, why = estimate_matrix(sketches, metric)
            for i, j in itertools.combinations(range(len(models)), 2):
                if why[i][j] is not None or not math.isfinite(float(v[i, j])):
                    out["undefined"][metric].append([i, j, why[i][j] or "undefined"])
                else:
                    out["values"][metric].append([i, j, float(v[i, j])])
                    out["bounds"][metric].append([i, j, float(b[i, j])])
        out["seconds"] = time.perf_counter() - start
        return out

    def _check_key(self, meta: dict[str, Any], base_id: str | None) -> None:
        """Sketches are keyed by the base and the seed: the run's index must have the run's."""
        if not meta:
            return
        got = (meta.get("base") or {}).get("id")
        if base_id and got != base_id:
            raise IndexMismatchError(
                f"{self.path} holds sketches made from another base ({(meta.get('base') or {}).get('ref')}, content "
                f"id {str(got)[:12]}) than this run's ({self.base}, {base_id[:12]}); delete that file (the run "
                "sketches its models again) or use another run directory")
        if meta.get("seed") != DEFAULT_SEED:
            raise IndexMismatchError(f"{self.path} was sketched with seed {meta.get('seed')!r}, not the run's "
                                     f"{DEFAULT_SEED}; delete that file (the run sketches its models again)")

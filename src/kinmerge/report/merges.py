"""Every merge of a study as one row, and the model a run hands over at a budget, held out.

Two questions need the merges one by one rather than the runs' curves:

- *Does kinship predict a merge's gain?* (paper §2, ``kinmerge suggest``). Each distinct merge is
  one observation: runs of one testbed share a store and merges are content-addressed, so a
  child that several runs made (every variant makes the same first generation) is counted once.
  Its gain is measured twice: on the selection part (what the loop saw) and on the held-out part
  (what a user gets). The selection gain is biased: parents are in the top-k *because* their
  selection scores were high, so regression to the mean pulls the gain down; only the held-out
  gain is free of it. The parents' mean score and the generation ride along as controls.
- *Which strategy hands over the better model at equal cost?* After ``b`` merges a run would hand
  over the best model by selection score among its foundations and first ``b`` children; its
  held-out score is what the user can expect (a run that stopped early carries its last value).

Pure functions over :class:`~kinmerge.report.queries.RunHistory`: no files, no store.

Example:
    >>> from kinmerge.pool import PoolModel
    >>> pool = [PoolModel("a", 0, score=0.5), PoolModel("b", 0, score=0.4), PoolModel("m", 1, ("a", "b"), 0.7)]
    >>> handed_over(pool, ["m"], 0, heldout={"a": 0.45, "m": 0.6})
    0.45
    >>> handed_over(pool, ["m"], 5, heldout={"a": 0.45, "m": 0.6})
    0.6
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from kinmerge.pool import PoolModel
from kinmerge.report.queries import RunHistory
from kinmerge.report.stats import mean_or_none

__all__ = ["MergeRecord", "handed_over", "merge_records", "records_csv", "records_from_csv"]


@dataclass(frozen=True)
class MergeRecord:
    """One distinct merge of a testbed: parents, their kinship and scores, the child's scores.

    ``*_selection`` scores are on the examples the loop ranked with, ``*_heldout`` on examples it
    never saw (``None`` where not scored). ``runs``: every run of the testbed that made it.
    """

    testbed: str
    child: str
    parent_a: str
    parent_b: str
    generation: int
    reason: str | None
    pcc: float | None
    parents_selection: float | None
    parents_heldout: float | None
    child_selection: float | None
    child_heldout: float | None
    runs: str

    @property
    def gain_selection(self) -> float | None:
        """Child minus the parents' mean, on the selection part."""
        return _minus(self.child_selection, self.parents_selection)

    @property
    def gain_heldout(self) -> float | None:
        """Child minus the parents' mean, on the held-out part: the gain a user gets."""
        return _minus(self.child_heldout, self.parents_heldout)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def merge_records(runs: Sequence[RunHistory], *,
                  heldout: Mapping[str, Mapping[str, float]] | None = None) -> list[MergeRecord]:
    """One :class:`MergeRecord` per distinct merge of each testbed (run directory), in run order.

    Args:
        runs: the runs; runs sharing a run directory share its merges.
        heldout: per run directory name, held-out scores of children the runs themselves did not
            score (the loop scores only top-k entrants; a study scores the rest afterwards).
    """
    extra = heldout or {}
    out: dict[tuple[str, str], MergeRecord] = {}
    made_by: dict[tuple[str, str], list[str]] = {}
    for r in runs:
        bed = Path(r.run_dir).name
        scores_ho = {**extra.get(bed, {}), **r.heldout}
        pcc = {row.child: row.kinship for row in r.gains.get("pcc", [])}
        for m in sorted((m for m in r.models.values() if len(m.parents) == 2), key=lambda m: (m.generation, m.id)):
            key = (bed, m.id)
            made_by.setdefault(key, []).append(r.run.id)
            if key in out:
                continue
            a, b = sorted(m.parents)
            parents = [r.models.get(p) for p in (a, b)]
            out[key] = MergeRecord(
                testbed=bed, child=m.id, parent_a=a, parent_b=b, generation=m.generation, reason=m.reason,
                pcc=pcc.get(m.id, m.kinship),
                parents_selection=mean_or_none([p.score if p is not None else None for p in parents]),
                parents_heldout=mean_or_none([scores_ho.get(p) for p in (a, b)]),
                child_selection=m.score, child_heldout=scores_ho.get(m.id), runs="")
    return [MergeRecord(**{**asdict(rec), "runs": " ".join(made_by[key])}) for key, rec in out.items()]


def records_csv(records: Sequence[MergeRecord]) -> str:
    """The records as CSV (with both gains), so anyone can recompute every number from them."""
    names = [f.name for f in fields(MergeRecord)]
    header = [*names, "gain_selection", "gain_heldout"]

    def cell(v: object) -> str:
        return "" if v is None else repr(v) if isinstance(v, float) else str(v)

    lines = [",".join(header)]
    for rec in records:
        values = [getattr(rec, n) for n in names] + [rec.gain_selection, rec.gain_heldout]
        lines.append(",".join(cell(v) for v in values))
    return "\n".join(lines) + "\n"


def records_from_csv(text: str) -> list[MergeRecord]:
    """The records :func:`records_csv` wrote (its gain columns are recomputed, not read).

    >>> rec = MergeRecord("bed", "c", "a", "b", 1, "greedy", 0.5, 0.4, 0.3, 0.6, None, "greedy kinship")
    >>> records_from_csv(records_csv([rec])) == [rec]
    True
    """
    import csv
    import io

    out = []
    for row in csv.DictReader(io.StringIO(text)):
        out.append(MergeRecord(**{f.name: _cell(f.name, row[f.name]) for f in fields(MergeRecord)}))  # type: ignore[arg-type]
    return out


_INT_COLUMNS = frozenset({"generation"})
_FLOAT_COLUMNS = frozenset({"pcc", "parents_selection", "parents_heldout", "child_selection", "child_heldout"})
_OPTIONAL_COLUMNS = _FLOAT_COLUMNS | {"reason"}


def _cell(column: str, cell: str) -> object:
    """A CSV cell back to the record's type (an empty optional cell is ``None``)."""
    if cell == "" and column in _OPTIONAL_COLUMNS:
        return None
    return int(cell) if column in _INT_COLUMNS else float(cell) if column in _FLOAT_COLUMNS else cell


def handed_over(pool: Sequence[PoolModel], merge_order: Sequence[str], budget: int, *,
                heldout: Mapping[str, float], rank: Callable[[float], float] = float) -> float | None:
    """The held-out score of the model a run would hand over after ``budget`` merges: the best by
    selection score (ties by id) among its foundations and its first ``budget`` children.

    A run that made fewer merges hands over what it ended with. ``None`` when that model has no
    held-out score. ``rank``: the run's ranking key of a score (``Fitness.key``: higher is better).
    """
    made = set(merge_order[:budget])
    candidates = [m for m in pool if m.score is not None and (not m.parents or m.id in made)]
    if not candidates:
        return None
    best = min(candidates, key=lambda m: (-rank(m.score or 0.0), m.id))
    return heldout.get(best.id)

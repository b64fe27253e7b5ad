"""``kinmerge.Index``: add models to an index file, query it, draw its matrix and family tree.

The glue between model files (``kinmerge.sources``, ``kinmerge.scan.sketches``), the index file
(``kinmerge.index.file``) and the pure math (``kinmerge.index.query``, ``family_tree``).

Example:
    >>> # not run here: the same as kinmerge.index's example, which runs
    >>> idx = Index("family.kmi")                                            # doctest: +SKIP
    >>> idx.add(["zoo:add", "zoo:sort", "zoo:count"], base="zoo:base")      # doctest: +SKIP
    >>> idx.query("zoo:add", top=2)[0]                                       # doctest: +SKIP
    Neighbour(id='...', label='count', value=0.012, bound=0.011, ...)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kinmerge.errors import KinmergeError
from kinmerge.index.family_tree import FamilyTree, TreeSettings, infer_tree
from kinmerge.index.file import IndexFile, IndexFileError, ModelRow
from kinmerge.index.query import COARSE, fold, rank
from kinmerge.sketch import DEFAULT_CONFIDENCE, DEFAULT_SEED, DEFAULT_SIZE, METRICS, Sketch, combine, estimate_matrix

if TYPE_CHECKING:  # the scan package is imported when a model is sketched, not with the index
    from kinmerge.scan import ScanResult

__all__ = ["AddResult", "Index", "IndexMismatchError", "Neighbour"]

PathLike = str | os.PathLike[str]
MAX_DELTA = 0.5  # ‖δ‖/‖θ_base‖ above which a model is refused (measured: zoo fine-tunes 0.06-0.08, another base 0.83)


class IndexMismatchError(KinmergeError, ValueError):
    """A model or base that does not belong to this index's family."""


@dataclass(frozen=True)
class Neighbour:
    """One indexed model's estimated kinship to the query, ``value ± bound`` at ``confidence``.

    ``exact``: the exact value, when re-checked by a scan (``query(..., exact=True)``).
    """

    id: str
    label: str
    value: float | None
    bound: float
    reason: str | None = None
    exact: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "value": self.value, "bound": self.bound,
                "reason": self.reason, "exact": self.exact}


@dataclass
class AddResult:
    """What ``Index.add`` did: ids added, models already present (skipped), bytes read.

    ``exact``: per batch, the ids sketched together and their exact kinship (a
    :class:`~kinmerge.scan.ScanResult`, models in id order) from the same read as the sketches:
    pairs within a batch need no estimate and no second scan.
    """

    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    exact: list[tuple[list[str], ScanResult]] = field(default_factory=list)


class Index:
    """A file of delta sketches of models fine-tuned from one base (docs/index.md).

    Args:
        path: the index file (created by the first ``add``).
        size, seed: the sketch of a new index (an existing index keeps its own).
        groups: also keep one smaller sketch per layer group (per-layer estimates, SLERP
            predictions, the family tree); ``False`` halves the file.
    """

    def __init__(self, path: PathLike, *, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED,
                 groups: bool = True) -> None:
        self.path = Path(path)
        self.file = IndexFile(self.path)
        self._new = {"size": size, "seed": seed, "groups": groups}
        self._coarse_cache: tuple[int, list[str], np.ndarray] | None = None
        self._rows_cache: tuple[int, list[ModelRow]] | None = None

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what is in it --------------------------------------------------------------------------
    @property
    def meta(self) -> dict[str, Any]:
        return self.file.meta()

    def models(self) -> list[ModelRow]:
        """The indexed models, in the order they were added (kept while the file is unchanged)."""
        stamp = self._stamp()
        if self._rows_cache is None or self._rows_cache[0] != stamp:
            self._rows_cache = (stamp, self.file.rows())
        return self._rows_cache[1]

    def _stamp(self) -> int:
        return self.path.stat().st_mtime_ns + self.file.count() if self.path.exists() else 0

    def __len__(self) -> int:
        return self.file.count()

    def find(self, ref: str, *, allow_pickle: bool = False) -> ModelRow | None:
        """An indexed model by content id (or a unique prefix of 6+ characters), label or reference.

        A bare name that is also a file or folder here names the same thing two ways: it resolves
        to the indexed model only when the path holds that model's weights (same content id);
        otherwise it is refused as ambiguous (docs/inputs.md, "How names resolve").

        Raises:
            IndexMismatchError: ``ref`` is an indexed label or id prefix and a path to other weights.
        """
        rows = self.models()
        hit = next((r for r in rows if ref in (r.id, r.ref)), None)
        if hit is not None:
            return hit
        by_name = [r for r in rows if r.label == ref]
        if not by_name:
            by_name = [r for r in rows if len(ref) >= 6 and r.id.startswith(ref)]
        if len(by_name) != 1:
            return None
        if os.path.exists(ref) and _content_id(ref, allow_pickle) != by_name[0].id:
            raise IndexMismatchError(
                f"{ref!r} is both a model in {self.path} ({by_name[0].label}, content id {by_name[0].id[:12]}) and a "
                f"path here holding other weights; write ./{ref} for the path, or the content id for the indexed model")
        return by_name[0]

    def sketch(self, model_id: str) -> Sketch:
        """The whole-delta sketch of an indexed model."""
        meta = self._require()
        row = [r for r in self.models() if r.id == model_id]
        if not row:
            raise IndexMismatchError(f"{model_id} is not in the index {self.path}")
        values = self.file.arrays("sketch", [model_id])[0].astype(np.float64)
        return Sketch(meta["seed"], meta["size"], row[0].n, row[0].sum, row[0].sumsq, values, self._ones())

    def _ones(self) -> np.ndarray:
        return self.file.shared("ones", "<i4").astype(np.float64)

    def _require(self) -> dict[str, Any]:
        meta = self.meta
        if not meta:
            raise IndexFileError(f"{self.path}: no index here yet; create it with `kinmerge index add {self.path} "
                                 "MODEL... --base BASE`")
        return meta

    # -- add ------------------------------------------------------------------------------------
    def add(self, models: Sequence[PathLike], *, base: PathLike | None = None, ids: Sequence[str] | None = None,
            progress: bool = False, batch: int = 8, allow_pickle: bool = False,
            max_delta: float | None = MAX_DELTA) -> AddResult:
        """Sketch ``models`` against the index's base and store them; models already in it are skipped.

        Each model is read once; the base once per ``batch`` models (memory: ``batch`` sketches,
        a few chunks per model). Every batch is one transaction: an interrupted ``add`` keeps the
        batches before it and nothing half-written.

        Args:
            base: the base model; required for a new index, checked against an existing one.
            ids: the models' ids if the caller knows them (e.g. a run store's); default their
                content ids (``kinmerge.sources.content_id``, cached).
            max_delta: refuse a model whose delta is this large relative to the base's own
                weights (``‖δ‖ / ‖θ_base‖``; fine-tunes differ by a few %, a model of another
                base with the same shapes by ~100%); None: no check.

        Raises:
            IndexMismatchError: ``base`` is not the index's base, or a model has fewer
                vocabulary rows than the base.
            ShapeMismatchError, MissingTensorError: a model not fine-tuned from this base (named).
            SourceError, NonFiniteError: unreadable or damaged models.
        """
        created = not self.path.exists()
        try:
            return self._add(models, base=base, ids=ids, progress=progress, batch=batch, allow_pickle=allow_pickle,
                             max_delta=max_delta)
        except BaseException:
            if created:  # a new index that got no model (a full disk, a refused model): leave no file
                self.file.discard_if_empty()
            raise

    def _add(self, models: Sequence[PathLike], *, base: PathLike | None, ids: Sequence[str] | None, progress: bool,
             batch: int, allow_pickle: bool, max_delta: float | None) -> AddResult:
        from kinmerge.progress import progress_bar
        from kinmerge.sources import open_model, open_models

        start = time.perf_counter()
        self.file.check_folder()
        meta = self.meta
        base_ref = self._check_base(meta, base, allow_pickle)
        out = AddResult()
        todo: list[tuple[str, str]] = []  # (ref, id)
        present = self.file.ids()
        for i, ref in enumerate(models):
            mid = ids[i] if ids is not None else _content_id(ref, allow_pickle)
            if mid in present or any(mid == t[1] for t in todo):
                out.skipped.append(mid)
            else:
                todo.append((os.fspath(ref), mid))
        if not todo:
            out.seconds = time.perf_counter() - start
            return out
        with open_model(base_ref, allow_pickle=allow_pickle) as src:
            base_bytes = sum(t.nbytes for t in src.tensors.values())
        with open_models([r for r, _ in todo], allow_pickle=allow_pickle, adapters=True) as opened:
            total = sum(t.nbytes for s in opened for t in s.tensors.values())
        n_batches = -(-len(todo) // max(1, batch))
        with progress_bar(total + base_bytes * n_batches, "sketching", unit="bytes", enabled=progress) as advance:
            for lo in range(0, len(todo), max(1, batch)):
                part = todo[lo : lo + max(1, batch)]
                with open_models([base_ref, *[r for r, _ in part]], allow_pickle=allow_pickle,
                                 adapters=True) as (b, *ms):
                    got = self._sketch_batch(b, ms, [m for _, m in part], advance, max_delta)
                out.added += [m for _, m in part]
                out.exact.append(([m for _, m in part], got.exact()))
                out.bytes_read += got.bytes_read
                out.notes += [n for n in got.notes if n not in out.notes]
        self._coarse_cache = None
        out.seconds = time.perf_counter() - start
        return out

    def _check_base(self, meta: dict[str, Any], base: PathLike | None, allow_pickle: bool) -> str:
        if not meta:
            if base is None:
                raise IndexMismatchError(f"{self.path} is a new index: give its base model (--base BASE)")
            return _ref_of(base)
        if base is not None:
            given = _content_id(base, allow_pickle)
            if given != meta["base"]["id"]:
                raise IndexMismatchError(
                    f"{os.fspath(base)} is not this index's base ({meta['base']['ref']}, content id "
                    f"{meta['base']['id'][:12]}); an index holds one family: use another index file")
            ref = _ref_of(base)
            if ref != meta["base"]["ref"]:  # the same weights elsewhere (a moved folder): re-point
                self.file.set_base_ref(ref)
            return ref
        return self._base_ref(meta)

    def _base_ref(self, meta: dict[str, Any]) -> str:
        """Where the index's base is; a local base that is gone is one line saying how to re-point."""
        ref = str(meta["base"]["ref"])
        if os.path.isabs(ref) and not os.path.exists(ref):
            raise IndexMismatchError(
                f"the base of {self.path} is gone from {ref} (moved?); re-point the index at it with `kinmerge index "
                f"add {self.path} --base NEW_PLACE` (checked by content id)")
        return ref

    def _sketch_batch(self, base: Any, models: list[Any], ids: list[str], advance: Callable[[float], None],
                      max_delta: float | None) -> Any:
        from kinmerge.errors import MissingTensorError
        from kinmerge.scan import display_labels
        from kinmerge.scan.adapter_sketches import sketch_pool
        from kinmerge.scan.sketches import layer_group

        for m in models:  # one model at a time: the error names the model that does not fit
            try:
                plans, _, _ = _fits(base, m)
            except MissingTensorError as exc:  # the scan's hint (--allow-missing) is no option here
                raise IndexMismatchError(f"{str(exc).partition('; pass --allow-missing')[0]}; an index compares "
                                         "models over all of the base's tensors: not of this family?") from None
            for p in plans:
                if p.numel != base.tensors[p.name].numel:
                    raise IndexMismatchError(
                        f"{m.ref}: tensor '{p.name}' has fewer vocabulary rows ({p.shape[0]}) than the base "
                        f"({base.tensors[p.name].shape[0]}); the index compares every model over the base's rows")
        meta = self.meta
        new = not meta
        size = self._new["size"] if new else meta["size"]
        seed = self._new["seed"] if new else meta["seed"]
        grouped = self._new["groups"] if new else bool(meta["groups"])
        res = sketch_pool(base, models, size=size, seed=seed, progress=advance,
                            groups=layer_group if grouped else None,
                            group_size=None if new else meta.get("group_size"), base_weights=bool(new and grouped))
        base_sq = float(np.sum(np.square(res.base_groups))) if res.base_groups is not None else meta.get("base_sumsq")
        for m, sk in zip(models, res.sketches, strict=True):
            ratio = (sk.sumsq / base_sq) ** 0.5 if base_sq and sk.sumsq is not None else None
            if max_delta is not None and ratio is not None and ratio > max_delta:
                raise IndexMismatchError(
                    f"{m.ref}: its delta from the base is {ratio:.0%} of the base's own weights (fine-tunes "
                    f"differ by a few %): not fine-tuned from this base? Index it with its own base")
        coverage = res.sketches[0].coverage_id
        if not new and coverage != meta["coverage_id"]:
            raise IndexMismatchError(f"{models[0].display_name}: sketched over other positions than the index "
                                     "(another tensor list?); it does not belong to this index's family")
        if not new and grouped and res.groups != meta["groups"]:
            raise IndexMismatchError(f"{models[0].display_name}: its layer groups differ from the index's")
        taken = {r.label for r in self.file.rows()}
        labels = display_labels([base, *models])[1:]
        with self.file.transaction() as conn:
            if new:
                gs = res.group_sketches[0] if grouped else []
                self.file.write_meta(conn, {
                    "seed": seed, "size": size, "coarse": min(COARSE, size), "groups": res.groups if grouped else [],
                    "group_size": gs[0].size if gs else 0, "n": res.sketches[0].n, "coverage_id": coverage,
                    "base_sumsq": base_sq,
                    "base": {"id": _content_id(base.ref, False), "ref": _ref_of(base.ref), "label": base.display_name},
                }, {"ones": np.rint(res.sketches[0].ones).astype("<i4"),
                    **({"group_ones": np.stack([np.rint(g.ones) for g in gs]).astype("<i4"),
                        "group_n": np.array([g.n for g in gs], "<i8"),
                        "base_groups": np.asarray(res.base_groups, "<f4")} if gs else {})})
            for i, (mid, sk, src) in enumerate(zip(ids, res.sketches, models, strict=True)):
                label = labels[i] if labels[i] not in taken else f"{labels[i]}@{mid[:8]}"
                taken.add(label)
                gsk = res.group_sketches[i] if grouped else []
                self.file.insert(conn, {
                    "id": mid, "label": label, "ref": _ref_of(src.ref), "made": _made(src), "n": sk.n, "sum": sk.sum,
                    "sumsq": sk.sumsq, "sketch": sk.values.astype("<f4"),
                    "coarse": fold(sk.values, min(COARSE, size)).astype("<f4"),
                    "group_moments": np.array([[g.sum, g.sumsq] for g in gsk], "<f8") if gsk else None,
                    "groups": np.stack([g.values for g in gsk]).astype("<f4") if gsk else None,
                })
        return res

    # -- queries --------------------------------------------------------------------------------
    def query(self, model: PathLike, *, metric: str = "pcc", top: int | None = 10, least: bool = False,
              exact: bool = False, confidence: float = DEFAULT_CONFIDENCE, progress: bool = False,
              allow_pickle: bool = False) -> list[Neighbour]:
        """Estimated kinship of ``model`` to every indexed model, nearest (or least related) first.

        ``model`` is an indexed model (id, label or reference: no file is read) or any model
        fine-tuned from the base (sketched once, not added). ``exact`` re-checks the shown models
        with one exact scan (``Neighbour.exact``).

        Raises:
            IndexMismatchError, ShapeMismatchError, MissingTensorError: the model does not
                belong to the index's family.
        """
        if metric not in METRICS:
            raise ValueError(f"unknown kinship metric '{metric}': choose from {', '.join(METRICS)}")
        meta = self._require()
        q, qid, qref = self._query_sketch(model, allow_pickle, progress)
        ids, coarse = self._coarse()
        rows = self.models()
        keep = [i for i, mid in enumerate(ids) if mid != qid]
        by_id = {r.id: r for r in rows}
        sums = np.array([by_id[ids[i]].sum for i in keep])
        sumsqs = np.array([by_id[ids[i]].sumsq for i in keep])

        def full(sel: list[int]) -> np.ndarray:
            return self.file.arrays("sketch", [ids[keep[i]] for i in sel])

        ranked = rank(q, coarse[keep], sums, sumsqs, meta["n"], self._ones(), full, metric, top=top, least=least,
                      confidence=confidence)
        out = [Neighbour(ids[keep[r.row]], by_id[ids[keep[r.row]]].label, r.value, r.bound, r.reason) for r in ranked]
        if exact and out:
            out = self._exact(qref, qid, out, metric, allow_pickle, progress)
        return out

    def _query_sketch(self, model: PathLike, allow_pickle: bool, progress: bool) -> tuple[Sketch, str | None, str]:
        hit = self.find(os.fspath(model), allow_pickle=allow_pickle)
        if hit is None:  # a path or hub id: indexed under its content id?
            found = self.file.rows([_content_id(model, allow_pickle)])
            hit = found[0] if found else None
        if hit is not None:
            return self.sketch(hit.id), hit.id, hit.ref
        from kinmerge.progress import progress_bar
        from kinmerge.scan.adapter_sketches import sketch_pool
        from kinmerge.sources import open_models

        meta = self.meta
        with open_models([self._base_ref(meta), model], allow_pickle=allow_pickle, adapters=True) as (b, m):
            _fits(b, m)
            total = sum(t.nbytes for s in (b, m) for t in s.tensors.values())
            with progress_bar(total, "sketching the query", unit="bytes", enabled=progress) as advance:
                res = sketch_pool(b, [m], size=meta["size"], seed=meta["seed"], progress=advance)
        sk = res.sketches[0]
        if sk.coverage_id != meta["coverage_id"]:
            raise IndexMismatchError(f"{os.fspath(model)}: covers other positions than the index's models (another "
                                     "vocabulary or tensor list); it does not belong to this index's family")
        return sk, None, _ref_of(model)

    def _coarse(self) -> tuple[list[str], np.ndarray]:
        """Every model's folded sketch, cached while the file is unchanged (repeated queries)."""
        stamp = self._stamp()
        if self._coarse_cache is None or self._coarse_cache[0] != stamp:
            ids, coarse = self.file.all_coarse()
            self._coarse_cache = (stamp, ids, coarse)
        return self._coarse_cache[1], self._coarse_cache[2]

    def _exact(self, qref: str, qid: str | None, out: list[Neighbour], metric: str, allow_pickle: bool,
               progress: bool) -> list[Neighbour]:
        from kinmerge.scan import scan_refs

        refs = {r.id: r.ref for r in self.models()}
        for mid, ref in ([(qid, qref)] if qid is not None else []) + [(n.id, refs[n.id]) for n in out]:
            now = _content_id(ref, allow_pickle)  # the exact value must be of the bytes that were indexed
            if now != mid:
                raise IndexMismatchError(
                    f"{ref} changed since it was indexed in {self.path} (content id {mid[:12]} then, {now[:12]} now); "
                    f"re-index it into a new file, or query without --exact")
        res = scan_refs(self._base_ref(self.meta), [qref, *[refs[n.id] for n in out]], allow_pickle=allow_pickle,
                        progress=progress)
        return [Neighbour(n.id, n.label, n.value, n.bound, n.reason, res.stats.value(metric, 0, i + 1))
                for i, n in enumerate(out)]

    def matrix(self, metric: str = "pcc", *, confidence: float = DEFAULT_CONFIDENCE
               ) -> tuple[list[ModelRow], np.ndarray, np.ndarray, list[list[str | None]]]:
        """Estimates for every pair of indexed models: (models, values, bounds, reasons)."""
        meta = self._require()
        rows = self.models()
        if len(rows) < 2:
            raise IndexMismatchError(f"{self.path} holds {len(rows)} model(s); a matrix needs two")
        values = self.file.arrays("sketch", [r.id for r in rows]).astype(np.float64)
        ones = self._ones()
        sketches = [Sketch(meta["seed"], meta["size"], r.n, r.sum, r.sumsq, values[i], ones)
                    for i, r in enumerate(rows)]
        v, b, why = estimate_matrix(sketches, metric, confidence)
        return rows, v, b, why

    def tree(self, settings: TreeSettings | None = None, *, use_time: bool = True) -> FamilyTree:
        """The inferred family tree (``kinmerge.index.family_tree``); ``use_time``: a parent must be
        older than its child where both models' file times are known."""
        meta = self._require()
        rows = self.models()
        if not meta.get("groups"):
            raise IndexFileError(f"{self.path} keeps no layer-group sketches (made with groups off); rebuild it "
                                 "with groups to infer a family tree")
        g = self.file.arrays("groups", [r.id for r in rows]).reshape(len(rows), len(meta["groups"]), -1)
        base = self.file.shared("base_groups", "<f4").reshape(len(meta["groups"]), -1)
        made = [r.made for r in rows] if use_time else None
        return infer_tree([r.id for r in rows], g, settings, made=made, base=base)

    def predict(self, parents: Sequence[str], weights: Sequence[float]) -> Sketch:
        """The sketch of a linear / task-arithmetic merge of indexed ``parents``, before it is made
        (``kinmerge.sketch.combine``; its ``Σδ²`` is unknown, so ED comes from the sketch)."""
        return combine(list(weights), [self.sketch(p) for p in parents])


def _fits(base: Any, model: Any) -> tuple[list[Any], list[str], list[str]]:
    """``scan.plan`` for a full model; for a LoRA adapter, its own check against the base (its
    deltas cover the base's tensors, so the plan is the base's alone)."""
    from kinmerge.scan import plan
    from kinmerge.scan.adapters import is_adapter

    if is_adapter(model):
        model.check_base(base, model.display_name, base.display_name)
        return plan(base, [])
    return plan(base, [model])


def _content_id(ref: PathLike, allow_pickle: bool) -> str:
    from kinmerge.sources import content_id

    return content_id(ref, allow_pickle=allow_pickle)


def _ref_of(ref: PathLike) -> str:
    """What to store to open a model again: its hub id, or its absolute path."""
    from kinmerge.sources import resolve_ref

    return resolve_ref(ref, fetch=False).ref


def _made(src: Any) -> float | None:
    """When a local model was written: its newest weight file's mtime (None for hub models)."""
    if src.hub_id is not None:
        return None
    try:
        return max(os.stat(f).st_mtime for f in src.files)
    except (OSError, ValueError):
        return None

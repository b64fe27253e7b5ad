"""Which models are merges of which, and which are fine-tunes of which, from sketches alone.

Pure math on the sketches of a family (no files): the ``kinmerge index tree`` command and
``Index.tree()`` hand it the layer-group sketches of every indexed model.

**Merges.** A linear or task-arithmetic merge's delta is a fixed combination of its parents'
deltas; a SLERP merge with a layer gradient is one *per layer group* (one ``t`` per layer and
kind: ``kinmerge.scan.sketches.layer_group``), up to SLERP's small curvature and the rounding of
the stored weights. So for a child ``c`` and candidate parents ``P`` we fit, in every group
``g``, ``δ_c,g ≈ Σ_p w_p,g δ_p,g`` by least squares **in sketch space** (all inner products
from the group sketches, the diagonal included) and measure the *residual share*

    ρ(c | P) = Σ_g ‖S_g r_g‖² / Σ_g ‖S_g δ_c,g‖²,

the part of the child's delta its parents do not explain. Why sketch space: the sketched
residual is the sketch's norm of one fixed vector, accurate to a *relative* ``sqrt(2/size)``,
so residuals of 0.1% and 0.3% are told apart; mixing exact norms with sketched cross terms
would leave an absolute error of ~``1/sqrt(size)`` (0.3%), as large as the signal.

**Fine-tunes.** ``c`` is a fine-tune of ``a`` when ``δ_c = δ_a + u`` with the update ``u``
unrelated to ``δ_a``: then ``‖δ_c‖² − ‖δ_a‖² = ‖δ_c − δ_a‖²`` (Pythagoras; the ratio ``π`` of
the two is ~1), while two siblings sharing a direction have ``π ~ 0`` and the parent of ``c``
seen from ``c`` has ``π ~ −1``. Models explained by nothing are fine-tunes of the base.

**Order.** Every explanation must form a DAG, and "explained by its own children" is a real
trap: a merge ``m = (a + b)/2`` lies between its children ``(m + a)/2`` and ``(m + b)/2``, which
explain it with a *smaller* residual (averaging halves the rounding noise). So models are
placed one at a time: first the models nothing explains (roots), then repeatedly the
unplaced model best explained by models already placed (smallest residual), until all are
placed. A model's parents are always placed before it, so the result is a DAG by
construction, and ancestors (explained with fewer steps of noise) come first.

Example:
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.standard_normal((2, 4, 512))                 # 2 models, 4 groups, 512 buckets
    >>> child = 0.3 * a + 0.7 * b
    >>> tree = infer_tree(["a", "b", "ab"], np.stack([a, b, child]))
    >>> tree.relation("ab").kind, tree.relation("ab").parents, tree.relation("ab").weights
    ('merge', ('b', 'a'), (0.7, 0.3))
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FamilyTree", "Relation", "TreeSettings", "infer_tree"]


@dataclass(frozen=True)
class TreeSettings:
    """Thresholds of the inference (defaults measured on recorded evolve runs: docs/index.md).

    Attributes:
        merge_residual: a merge leaves at most this share of the child's delta unexplained.
        merge_gain: ... and at most this fraction of the best residual with one parent fewer
            (a second or third parent must explain clearly more; else the fewest parents that
            fit are kept).
        min_weight, max_weight: each parent of a merge carries a mean weight in this range.
        finetune_cos: a fine-tune's delta has at least this cosine with its parent's.
        finetune_pythagoras: ``|π − 1|`` at most this for a fine-tune (see the module docstring).
        max_parents: 2, or 3 to also look for three-parent merges (slower: triples).
        candidates: parents are looked for among this many nearest models (by cosine).
    """

    merge_residual: float = 0.05
    merge_gain: float = 0.5
    min_weight: float = 0.05
    max_weight: float = 1.1
    finetune_cos: float = 0.25
    finetune_pythagoras: float = 0.35
    max_parents: int = 3
    candidates: int = 64


@dataclass(frozen=True)
class Relation:
    """How one model came about, as inferred.

    Attributes:
        model: its id.
        kind: ``merge`` (of ``parents``), ``fine-tune`` (of ``parents[0]``), or ``root`` (a
            fine-tune of the base: nothing in the index explains it).
        parents: ids, the largest weight first.
        residual: share of the model's delta its parents leave unexplained (merges; for a
            fine-tune the update's share; 1.0 for a root).
        weights: mass-weighted mean weight of each parent (merges), 1.0 for a fine-tune.
        runner_up: the next best explanation with other parents, and its residual: how sure.
    """

    model: str
    kind: str
    parents: tuple[str, ...] = ()
    residual: float = 1.0
    weights: tuple[float, ...] = ()
    runner_up: tuple[tuple[str, ...], float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "kind": self.kind, "parents": list(self.parents),
                "residual": self.residual, "weights": list(self.weights),
                "runner_up": None if self.runner_up is None else
                {"parents": list(self.runner_up[0]), "residual": self.runner_up[1]}}


@dataclass
class FamilyTree:
    """The inferred relations, one per model, in placement order (parents before children)."""

    relations: list[Relation] = field(default_factory=list)

    def relation(self, model: str) -> Relation:
        return next(r for r in self.relations if r.model == model)

    def depth(self) -> dict[str, int]:
        """Generation-like depth: roots 0, a child one more than its deepest parent."""
        out: dict[str, int] = {}
        for r in self.relations:
            out[r.model] = 1 + max((out[p] for p in r.parents), default=-1) if r.parents else 0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"relations": [r.to_dict() for r in self.relations]}

    def render(self, labels: dict[str, str] | None = None, base: str = "base") -> str:
        """The tree as text: roots under the base, then each model under its first parent."""
        name = (labels or {}).get
        children: dict[str | None, list[Relation]] = {}
        for r in self.relations:
            children.setdefault(r.parents[0] if r.parents else None, []).append(r)
        lines = [base]

        def describe(r: Relation) -> str:
            label = name(r.model, r.model)
            if r.kind == "root":
                return f"{label}  (fine-tune of the base)"
            if r.kind == "fine-tune":
                return f"{label}  (fine-tune of {name(r.parents[0], r.parents[0])}, update {r.residual:.1%})"
            mix = " + ".join(f"{w:.2f}·{name(p, p)}" for p, w in zip(r.parents, r.weights, strict=True))
            return f"{label}  = merge {mix}  (residual {r.residual:.2%})"

        def walk(parent: str | None, prefix: str) -> None:
            kids = children.get(parent, [])
            for i, r in enumerate(kids):
                last = i == len(kids) - 1
                lines.append(prefix + ("└── " if last else "├── ") + describe(r))
                walk(r.model, prefix + ("    " if last else "│   "))

        walk(None, "")
        return "\n".join(lines)


def infer_tree(ids: Sequence[str], groups: np.ndarray, settings: TreeSettings | None = None, *,
               made: Sequence[float | None] | None = None, base: np.ndarray | None = None) -> FamilyTree:
    """Infer merges and fine-tunes among the models from their layer-group sketches.

    Args:
        ids: one id per model.
        groups: (models, groups, buckets) group sketch values (one sketch per layer group;
            a single group works for recipes without a layer gradient).
        settings: thresholds (:class:`TreeSettings`).
        made: when each model was made (e.g. its weight files' modification time), None where
            unknown: a parent must be older than its child, whenever both times are known.
        base: (groups, buckets) group sketches of the base's own weights ``θ_base``, fitted
            alongside every parent set: SLERP interpolates whole weights, so a child's delta is
            ``s0·δ_a + s1·δ_b + (s0 + s1 − 1)·θ_base`` with ``s0 + s1`` slightly above 1.

    Returns:
        A :class:`FamilyTree` with one relation per model, parents placed before children.
    """
    cfg = settings or TreeSettings()
    v = np.asarray(groups, dtype=np.float64)
    if v.ndim != 3 or v.shape[0] != len(ids):
        raise ValueError(f"groups must be (models, groups, buckets) with {len(ids)} models, got {v.shape}")
    m = len(ids)
    if base is not None:
        v = np.concatenate([v, np.asarray(base, dtype=np.float64)[None]])
    gram = np.einsum("igk,jgk->gij", v, v, optimize=True)  # (G, M, M) per-group Gram in sketch space
    total = gram[:, :m, :m].sum(axis=0)
    norm = np.sqrt(np.maximum(np.diag(total), 1e-300))
    cos = total / np.outer(norm, norm)
    ranked = {c: [int(j) for j in np.argsort(-cos[c], kind="stable") if j != c] for c in range(m)}
    fit = _Fitter(gram, cfg, extra=m if base is not None else None)

    def best(c: int, allowed: set[int]) -> tuple[Relation, float] | None:
        """The best explanation of ``c`` by allowed models, with the runner-up (how sure)."""
        options = fit.options(c, [j for j in ranked[c] if j in allowed][: cfg.candidates])
        if not options:
            return None
        kind, res, parents, weights = options[0]
        order = np.argsort(-weights, kind="stable")  # the main parent first
        parents, weights = tuple(parents[i] for i in order), np.round(weights[order], 6)
        runner = next(((p, r) for _, r, p, _ in options[1:] if set(p) != set(parents)), None)
        rel = Relation(ids[c], kind, tuple(ids[p] for p in parents), float(res), tuple(float(w) for w in weights),
                       None if runner is None else (tuple(ids[p] for p in runner[0]), float(runner[1])))
        return rel, res

    older = _older(made, m)
    if made is not None and all(t is not None for t in made):  # oldest first: parents are older
        relations = []
        for c in sorted(range(m), key=lambda j: (made[j], j)):
            b = best(c, older[c])
            relations.append(Relation(ids[c], "root") if b is None else b[0])
        return FamilyTree(relations)
    roots = [c for c in range(m) if best(c, older[c]) is None]
    placed = set(roots)
    relations = [Relation(ids[c], "root") for c in roots]
    todo = set(range(m)) - placed
    while todo:
        scored = [(b[1], c, b[0]) for c in sorted(todo) if (b := best(c, placed & older[c])) is not None]
        if scored:
            _, c, rel = min(scored, key=lambda x: (x[0], x[1]))
        else:  # explained only by each other (near-copies in a cycle): the least explained is a root
            c = max(sorted(todo), key=lambda j: fit.best_single(j, ranked[j][: cfg.candidates]))
            rel = Relation(ids[c], "root")
        relations.append(rel)
        placed.add(c)
        todo.discard(c)
    return FamilyTree(relations)


def _older(made: Sequence[float | None] | None, m: int) -> list[set[int]]:
    """For each model, the models that may be its parents: all others, less those known newer."""
    if made is None:
        return [set(range(m)) - {c} for c in range(m)]
    if len(made) != m:
        raise ValueError(f"made needs one time per model ({m}), got {len(made)}")
    t = [float("nan") if x is None else float(x) for x in made]  # NaN compares False: unknown never excludes
    return [{p for p in range(m) if p != c and not t[p] >= t[c]} for c in range(m)]


class _Fitter:
    """Per-group least-squares fits of one child on candidate parent sets (all in sketch space).

    Every child's acceptable explanations are computed once (vectorised over the candidate
    pairs, then triples only if no pair fits) and filtered by the models placed so far.
    """

    def __init__(self, gram: np.ndarray, cfg: TreeSettings, extra: int | None = None) -> None:
        self.gram, self.cfg, self.extra = gram, cfg, extra
        self.energy = np.einsum("gii->gi", gram)  # (G, M): ‖S_g δ_i‖²
        self.total = self.energy.sum(axis=0)
        self.whole = gram.sum(axis=0)
        self._options: dict[tuple[int, tuple[int, ...]], list[tuple[str, float, tuple[int, ...], np.ndarray]]] = {}

    def fits(self, c: int, sets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residual shares (S,) and mass-weighted mean weights (S, k) of c on each parent set (S, k)."""
        g = self.gram
        k = sets.shape[1]
        if self.extra is not None:  # the base's weights: fitted, never reported
            sets = np.concatenate([sets, np.full((len(sets), 1), self.extra)], axis=1)
            k += 1
        a = g[:, sets[:, :, None], sets[:, None, :]]  # (G, S, k, k)
        y = g[:, sets, c]  # (G, S, k)
        scale = np.maximum(np.einsum("gsii->gs", a) / k, 1e-300)
        a = a + 1e-9 * scale[:, :, None, None] * np.eye(k)  # groups where parents are collinear or zero
        w = np.linalg.solve(a, y[..., None])[..., 0]  # (G, S, k)
        resid = np.maximum(self.energy[:, c, None] - np.einsum("gsk,gsk->gs", w, y), 0.0)
        mass = self.energy[:, c] / max(float(self.total[c]), 1e-300)
        mean_w = np.einsum("g,gsk->sk", mass, w)
        return resid.sum(axis=0) / self.total[c], mean_w[:, :-1] if self.extra is not None else mean_w

    def best_single(self, c: int, cand: Sequence[int]) -> float:
        if not cand or self.total[c] <= 0:
            return 1.0
        return float(self.fits(c, np.array(cand)[:, None])[0].min())

    def options(self, c: int, cand: list[int]) -> list[tuple[str, float, tuple[int, ...], np.ndarray]]:
        """Every acceptable explanation of ``c`` among ``cand``, best first: merges (smallest
        residual first), then fine-tunes (smallest update first)."""
        key = (c, tuple(sorted(cand)))
        if key in self._options:
            return self._options[key]
        cfg, g = self.cfg, self.whole
        out: list[tuple[str, float, tuple[int, ...], np.ndarray]] = []
        if self.total[c] > 0 and cand:
            previous = self.best_single(c, cand)  # k parents must explain clearly more than k - 1
            fallback: list[tuple[str, float, tuple[int, ...], np.ndarray]] = []
            for k in range(2, cfg.max_parents + 1):
                sets = np.array(list(itertools.combinations(cand, k)), dtype=np.int64).reshape(-1, k)
                if not len(sets):
                    break
                res, w = self.fits(c, sets)
                fits = (res <= cfg.merge_residual) & ((w >= cfg.min_weight) & (w <= cfg.max_weight)).all(axis=1)
                found = [("merge", float(res[i]), tuple(int(x) for x in sets[i]), w[i]) for i in np.flatnonzero(fits)]
                gain = [o for o in found if o[1] <= cfg.merge_gain * previous]
                if gain:
                    out = gain
                    break
                fallback = fallback or found  # e.g. a merge of two near-identical parents
                previous = float(res.min()) if len(res) else previous
            out = out or fallback
            for p in cand if not out else ():
                cc, pp, cp = g[c, c], g[p, p], g[c, p]
                ed2 = cc + pp - 2 * cp
                cosine = cp / np.sqrt(cc * pp) if cc > 0 and pp > 0 else 0.0
                if ed2 > 0 and cosine >= cfg.finetune_cos and abs((cc - pp) / ed2 - 1.0) <= cfg.finetune_pythagoras:
                    out.append(("fine-tune", float(ed2 / cc), (p,), np.ones(1)))
        out.sort(key=lambda o: (o[0] != "merge", o[1]))
        self._options[key] = out
        return out

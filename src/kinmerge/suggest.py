"""Which models to merge: candidate pairs ranked by what kinship (and scores) predict.

The paper's first promise for model kinship is help choosing merges. A merge's gain (the child's
score minus its parents' mean) falls as the parents' kinship rises: close relatives have little
to teach each other. :data:`PRIOR` is that relation fitted on our real-model study (held-out
gains of SLERP merges of SmolLM2-135M fine-tunes, docs/results.md); with the candidates' scores
the ranking is the predicted child score, the parents' mean plus that gain.

What to trust (docs/results.md, R5 and R6): on real fine-tunes kinship ranks the *gain* (it
spots the redundant merge, a model merged back with its own parent), but the best *child* comes
from strong parents, and there the parents' scores alone did as well as this ranking. Read a
ranking without scores as "which pairs are not redundant", not as "which merge is best".

Example:
    >>> import numpy as np
    >>> rows = rank_pairs(["a", "b", "c"], np.array([[1, .9, .1], [.9, 1, .2], [.1, .2, 1]]))
    >>> [(r.a, r.b) for r in rows][:2]
    [('a', 'c'), ('b', 'c')]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kinmerge.evolve.strategies.predicted import GainModel

__all__ = ["PRIOR", "PRIOR_SOURCE", "Suggestion", "rank_pairs"]

#: held-out gain ≈ a + b * PCC of the parents, least squares over the real-model study's distinct
#: children (its runs' merges and its all-pairs tests: docs/results-real-merges.csv and
#: docs/results-real-allpairs.csv; ``benchmarks/real_analysis.refit_prior``, which a test reruns).
PRIOR = GainModel(a=0.0675, b=-0.1021, sd=0.0674, n=260)
PRIOR_SOURCE = ("held-out gain vs parents' PCC over 260 distinct SLERP merges of SmolLM2-135M fine-tunes "
                "(docs/results.md): PCC ranks the gain, but in all-pairs tests the parents' scores alone picked "
                "a child as good as this ranking's (regret 0.061 vs 0.067; kinship alone 0.187, a random pair 0.193)")


@dataclass(frozen=True)
class Suggestion:
    """One candidate pair: its kinship, predicted gain and (with scores) predicted child score."""

    a: str
    b: str
    kinship: float | None
    predicted_gain: float | None
    predicted_score: float | None
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"a": self.a, "b": self.b, "pcc": self.kinship, "predicted_gain": self.predicted_gain,
                "predicted_score": self.predicted_score, "reason": self.reason}


def rank_pairs(labels: Sequence[str], pcc: np.ndarray, *, scores: Mapping[str, float] | None = None,
               prior: GainModel = PRIOR) -> list[Suggestion]:
    """Every pair of ``labels``, most promising first (ties by name).

    Without ``scores``, pairs rank by predicted gain (lowest kinship first); with them, by the
    predicted child score: the parents' mean plus the predicted gain. A pair whose kinship is
    undefined (a model equal to the base) comes last.
    """
    rows = []
    for i, j in itertools.combinations(range(len(labels)), 2):
        a, b = labels[i], labels[j]
        kin = float(pcc[i, j]) if math.isfinite(float(pcc[i, j])) else None
        gain = prior.predict(kin) if kin is not None else None
        mean = (scores[a] + scores[b]) / 2 if scores and a in scores and b in scores else None
        child = mean + gain if mean is not None and gain is not None else None
        if kin is None:
            reason = "kinship undefined (a delta is zero: a model equal to the base?)"
        else:
            closeness = "near-identical" if kin > 0.9 else "close kin" if kin > 0.5 else "distant kin"
            reason = f"PCC {kin:.2f}, {closeness}: predicted gain {gain:+.3f} ± {prior.sd:.3f}"
            if child is not None and mean is not None:
                reason += f"; parents' mean {mean:.3f} -> predicted child {child:.3f}"
        rows.append(Suggestion(a, b, kin, gain, child, reason))
    key_of = (lambda s: (s.predicted_score is None, -(s.predicted_score or 0.0), s.a, s.b)) if scores else \
        (lambda s: (s.predicted_gain is None, -(s.predicted_gain or 0.0), s.a, s.b))
    return sorted(rows, key=key_of)

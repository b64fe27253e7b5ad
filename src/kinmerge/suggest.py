"""Which models to merge: candidate pairs ranked by what kinship (and scores) predict.

The paper's first promise for model kinship is help choosing merges. A merge's gain (the child's
score minus its parents' mean) falls as the parents' kinship rises: close relatives have little
to teach each other. :data:`PRIOR` is that relation fitted on our own study's merges (see
docs/results.md); with the candidates' scores it also predicts the child's score, since a child of
two strong but distant parents is the most promising merge.

What to trust: the relation explains the *size* of the gain better than its sign, and merges of
one evolution are not independent observations; read a ranking as a shortlist to try, not as a
verdict.

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

#: gain ≈ a + b * PCC of the parents, fitted on the study's merges of the headroom zoo (SLERP with the
#: paper's layer gradient; docs/results.md, H6).
PRIOR = GainModel(a=0.0579, b=-0.0699, sd=0.0263, n=1483)
PRIOR_SOURCE = ("gain vs parents' PCC over 1,483 SLERP merges of the study's headroom-zoo runs: r = -0.67 "
                "(|gain|: r = -0.73); controlled for the parents' mean score and the generation, partial r = -0.26; "
                "related merges of one run are not independent points")


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

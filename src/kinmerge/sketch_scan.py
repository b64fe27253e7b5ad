"""Sketching models in one pass: kept importable here; the code is ``kinmerge.scan.sketches``.

Example:
    >>> from kinmerge.sketch import estimate
    >>> from kinmerge.sources import open_models
    >>> with open_models(["zoo:base", "zoo:add", "zoo:sort"]) as (base, *models):
    ...     result = sketch_models(base, models)
    >>> e = estimate(*result.sketches, "pcc")   # the exact PCC is -0.0098
    >>> round(e.value, 4), round(e.bound, 4), e.confidence
    (-0.0097, 0.0109, 0.99)
"""

from kinmerge.scan.sketches import (
    SketchBuilder,
    Sketches,
    SketchResult,
    group_size_for,
    layer_group,
    sketch_models,
)

__all__ = ["SketchBuilder", "SketchResult", "Sketches", "group_size_for", "layer_group", "sketch_models"]

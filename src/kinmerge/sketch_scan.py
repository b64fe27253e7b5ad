"""Sketching models in one pass: kept importable here; the code (and its example) is ``kinmerge.scan.sketches``."""

from kinmerge.scan.sketches import (
    SketchBuilder,
    Sketches,
    SketchResult,
    group_size_for,
    layer_group,
    sketch_models,
)

__all__ = ["SketchBuilder", "SketchResult", "Sketches", "group_size_for", "layer_group", "sketch_models"]

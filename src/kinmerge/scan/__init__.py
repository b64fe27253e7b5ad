"""One streaming pass over a base and N models, and what is computed from it.

The modules, bottom up (one concept each):

* ``align`` — which tensors line up (``plan``, ``TensorPlan``) and the models' display labels;
* ``stream`` — the one ordered pass: chunking, worker threads reading with positional reads into
  their own buffers, chunk-ordered reduction, and the ``Consumer`` interface;
* ``exact`` — the exact kinship statistics as a consumer (``scan``, ``scan_tensors``, ``ScanResult``);
* ``sketches`` — delta sketches as a consumer, sharing the read with the exact statistics
  (``sketch_models``; ``kinmerge.sketch_scan`` re-exports it);
* ``shards`` — the exact matrix on Ray, each shard task one pass over its tensors
  (``kinmerge.scan_ray`` re-exports it);
* ``adapters`` — pools with LoRA adapters, from their factors (``kinmerge.scan_lora`` re-exports it);
* ``views`` — opening references (``scan_refs``) and the JSON views.

Only the exact path is imported here, so ``import kinmerge.scan`` stays quick; the sketch, Ray
and adapter modules load when they are used. No submodule shares a name with a function exported
here (importing a submodule sets it as the package's attribute).

Example:
    >>> r = scan_refs("zoo:base", ["zoo:add", "zoo:sort"])
    >>> round(r.pair().pcc, 4)
    -0.0098
"""

from kinmerge.scan.align import TensorPlan, display_labels, plan
from kinmerge.scan.exact import ExactStats, PairKinship, ScanResult, layer_of, scan, scan_tensors
from kinmerge.scan.stream import DEFAULT_CHUNK, Consumer, Pass, Piece, Progress, n_threads, stream
from kinmerge.scan.views import pair_dict, result_dict, scan_refs

__all__ = [
    "DEFAULT_CHUNK",
    "Consumer",
    "ExactStats",
    "PairKinship",
    "Pass",
    "Piece",
    "Progress",
    "ScanResult",
    "TensorPlan",
    "display_labels",
    "layer_of",
    "n_threads",
    "pair_dict",
    "plan",
    "result_dict",
    "scan",
    "scan_refs",
    "scan_tensors",
    "stream",
]

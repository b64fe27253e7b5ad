"""The edges of a scan: open references and scan them (``scan_refs``), and JSON-ready views of a result."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from kinmerge.errors import ConfigError
from kinmerge.scan.align import plan
from kinmerge.scan.exact import ScanResult, scan
from kinmerge.scan.stream import DEFAULT_CHUNK


def result_dict(result: ScanResult, metrics: Sequence[str], *,
                breakdown: str | None = None) -> dict[str, Any]:
    """A JSON-ready view: matrices per metric (None where undefined, with the reason)."""
    st = result.stats
    n = st.n_models
    out: dict[str, Any] = {
        "base": result.base,
        "models": result.models,
        "elements_compared": st.n,
        "kinship": {},
        "undefined": {},
        "notes": result.notes,
        "skipped_tensors": result.skipped,
        "bytes_read": result.bytes_read,
        "seconds": round(result.seconds, 4),
    }
    for metric in metrics:
        out["kinship"][metric] = [[st.value(metric, i, j) for j in range(n)] for i in range(n)]
        reasons = {
            f"{result.models[i]} ~ {result.models[j]}": why
            for i in range(n)
            for j in range(i + 1, n)
            if (why := st.why_undefined(metric, i, j))
        }
        if reasons:
            out["undefined"][metric] = reasons
    if n > 2:
        out["mean_pairwise"] = {m: st.mean_pairwise(m) for m in metrics}
    if breakdown:
        parts = result.per_layer() if breakdown == "layer" else result.per_tensor
        out[f"per_{breakdown}"] = {
            key: {m: [[s.value(m, i, j) for j in range(n)] for i in range(n)] for m in metrics}
            | {"elements": s.n}
            for key, s in parts.items()
        }
        out["breakdown_note"] = (
            f"per-{breakdown} values are a breakdown, not the headline: the global kinship is computed over "
            "the whole delta"
        )
    return out


def pair_dict(result: ScanResult, metrics: Sequence[str], *, breakdown: str | None = None) -> dict[str, Any]:
    """:func:`result_dict` of a two-model scan, as one number per metric instead of 2x2 matrices."""
    data = result_dict(result, metrics, breakdown=breakdown)
    data["kinship"] = {m: rows[0][1] for m, rows in data["kinship"].items()}
    data["undefined"] = {m: next(iter(r.values())) for m, r in data["undefined"].items()}
    if breakdown:
        for part in data[f"per_{breakdown}"].values():
            for m in metrics:
                part[m] = part[m][0][1]
    return data


def scan_refs(
    base: str | os.PathLike[str] | None,
    models: Sequence[str | os.PathLike[str]],
    *,
    chunk: int | None = None,
    allow_missing: bool = False,
    allow_pickle: bool = False,
    progress: bool = False,
) -> ScanResult:
    """Open ``base`` and ``models`` (folders, files, hub ids or LoRA adapters), scan them once, close them.

    A pool holding PEFT LoRA adapters is read from their factors (``kinmerge.scan.adapters``); with
    ``base`` None the adapters' ``base_model_name_or_path`` is the base. ``progress`` draws a bar
    with bytes and throughput on stderr.

    Example:
        >>> r = scan_refs("zoo:base", ["zoo:add", "zoo:sort"])
        >>> round(r.stats.value("pcc", 0, 1), 4)
        -0.0098
    """
    from kinmerge.progress import progress_bar
    from kinmerge.sources import LoraSource, open_model, open_models

    with open_models(list(models), allow_pickle=allow_pickle, adapters=True) as opened:
        adapters = [m for m in opened if isinstance(m, LoraSource)]
        if adapters:  # the one dispatch to the adapter pass (imported when needed: start-up stays short)
            from kinmerge.scan.adapters import adapters_base, planned_bytes, scan_adapters

            with open_model(adapters_base(adapters) if base is None else base, allow_pickle=allow_pickle,
                            adapters=True) as base_src, \
                    progress_bar(planned_bytes(base_src, opened), "reading", unit="bytes", enabled=progress) as advance:
                return scan_adapters(base_src, opened, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                                     allow_missing=allow_missing, progress=advance)
        if base is None:
            raise ConfigError("no base given: pass --base (only LoRA adapters name their own base)")
        with open_model(base, allow_pickle=allow_pickle) as base_src:
            plan(base_src, opened, allow_missing=allow_missing)  # refuse before a progress bar is drawn
            total = sum(info.nbytes for src in [base_src, *opened] for info in src.tensors.values())
            with progress_bar(total, "reading", unit="bytes", enabled=progress) as advance:
                return scan(base_src, opened, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                            allow_missing=allow_missing, progress=advance)

"""Kinship of pools with LoRA adapters: kept importable here; the code is ``kinmerge.scan.adapters``."""

from kinmerge.scan.adapters import adapters_base, is_adapter, planned_bytes, read_factors, scan_adapters

__all__ = ["adapters_base", "is_adapter", "planned_bytes", "read_factors", "scan_adapters"]

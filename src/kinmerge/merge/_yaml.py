"""YAML as kinmerge writes it: keys in the given order, number lists on one line (``[0.0, 0.5]``).

Example:
    >>> print(dump_yaml({"t": [0.0, 0.5], "models": [{"model": "a"}]}), end="")
    t: [0.0, 0.5]
    models:
    - model: a
"""

from __future__ import annotations

from typing import Any

__all__ = ["dump_yaml"]


def dump_yaml(data: Any) -> str:
    """``data`` as YAML text (safe types only; needs pyyaml, which mergekit brings)."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, value: list) -> Any:
        flow = bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    _Dumper.add_representer(list, _list)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)

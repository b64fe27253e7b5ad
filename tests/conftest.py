"""The fixtures tests share (no network and an own kinmerge cache come from the root conftest.py)."""

from __future__ import annotations

#!/usr/bin/env python
"""Rebuild a zoo shipped inside the package (tiny or headroom) and replace it atomically.

tiny lives at src/kinmerge/data/zoo, headroom at src/kinmerge/data/zoo-headroom
(``kinmerge.zoo.SHIPPED``).

Trains on CPU in a few minutes (see ``build_seconds`` in the written zoo.json), then replaces
the old zoo atomically. Same as ``kinmerge zoo build src/kinmerge/data/zoo --preset tiny --force``.

Example:
    .venv/bin/python scripts/build_zoo.py --seed 0
    .venv/bin/python scripts/build_zoo.py --preset headroom
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kinmerge.zoo import SHIPPED, build_zoo

DATA = Path(__file__).resolve().parents[1] / "src" / "kinmerge" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="build seed (default 0)")
    parser.add_argument("--preset", default="tiny", choices=sorted(SHIPPED),
                        help="shipped zoo to rebuild (default tiny)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"zoo folder (default {DATA}/<the preset's folder>)")
    args = parser.parse_args()
    out = args.out or DATA / SHIPPED[args.preset]
    zoo = build_zoo(out, preset=args.preset, seed=args.seed, overwrite=True)
    scores = zoo.manifest["scores"]
    for name, s in scores.items():
        print(f"{name:8s} " + "  ".join(f"{t} {v:.2f}" for t, v in s.items()))
    print(f"built {zoo.root} in {zoo.manifest['build_seconds']['total']:.0f}s")


if __name__ == "__main__":
    main()

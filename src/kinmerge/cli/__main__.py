"""``python -m kinmerge.cli``."""

from kinmerge.cli import main

main()

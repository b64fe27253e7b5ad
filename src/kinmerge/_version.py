"""The version of kinmerge, in one place every layer may read."""

__version__ = "0.1.0"

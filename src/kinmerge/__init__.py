"""kinmerge: kinship-guided model merging.

Model kinship is the similarity of two fine-tuned models measured on their weight deltas from a
shared base (Hu et al., 2025, arXiv 2410.12613). ``import kinmerge`` stays light: numpy and
safetensors only; torch, transformers and mergekit load inside the functions that need them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Errors are part of kinmerge's interface.

Every error a user can cause is a ``KinmergeError``: the CLI prints its message as one line and
exits with code 2, never a traceback. Messages name the file or tensor at fault and say what to
do. Each class also inherits the matching builtin, so library callers can catch either.
"""

from __future__ import annotations

import re


class KinmergeError(Exception):
    """Base class: a problem with the user's input or environment, reported in one line."""

    exit_code = 2


class SourceError(KinmergeError, FileNotFoundError):
    """A model reference cannot be resolved to readable tensors (missing, corrupt, unsupported)."""


class CorruptFileError(SourceError):
    """A weights file is truncated or its header is not valid safetensors/GGUF."""


class UnsupportedDtypeError(KinmergeError, TypeError):
    """A tensor's dtype is one kinship cannot read exactly (e.g. int8, F8)."""


class PickleNotAllowedError(SourceError):
    """Only pickled ``pytorch_model*.bin`` weights were found and ``--allow-pickle`` was not given."""


class ShapeMismatchError(KinmergeError, ValueError):
    """Two models disagree on a tensor's shape in a way kinship cannot reconcile."""


class MissingTensorError(KinmergeError, KeyError):
    """A tensor exists in some models but not in others.

    Attributes:
        format_mismatch: the names differ because the files are of different formats (a GGUF file
            and a Hugging Face folder), so skipping the missing tensors would skip them all.
    """

    def __init__(self, message: str, *, format_mismatch: bool = False) -> None:
        super().__init__(message)
        self.format_mismatch = format_mismatch

    def __str__(self) -> str:  # KeyError quotes its message; we want the plain line.
        return str(self.args[0]) if self.args else ""


class NonFiniteError(KinmergeError, ValueError):
    """A tensor holds NaN or Inf, which would silently poison every kinship value."""


class DuplicateModelError(KinmergeError, ValueError):
    """The same model was given twice (same path or same content)."""


class OutputFolderError(KinmergeError, FileExistsError):
    """An output folder cannot be written without destroying something kinmerge did not write: it
    holds the user's files, it is a file, or it holds the command's own input."""


class ConfigError(KinmergeError, ValueError):
    """A configuration file or option is invalid."""


class MergeError(KinmergeError, RuntimeError):
    """A merge could not be made (bad recipe, mergekit failure)."""


class EvaluationError(KinmergeError, RuntimeError):
    """An evaluation could not be run (bad task folder, model fails to load)."""


class StoreError(KinmergeError, RuntimeError):
    """The run store is locked by another run, or has an unknown schema."""


class SettingsChangedError(StoreError):
    """A run exists with other settings, so resuming it would mix two experiments in one pool.

    Attributes:
        changes: ``{field: (stored, given)}``, e.g. ``{"strategy.k": (3, 4)}``.
    """

    def __init__(self, message: str, changes: dict[str, tuple[object, object]]) -> None:
        super().__init__(message)
        self.changes = changes


class ClusterError(KinmergeError, RuntimeError):
    """A cluster cannot run the steps: unreachable, a node that does not see the shared storage, a
    request no node can meet, or a worker lost more often than its retries allow."""


def install_hint(*extras: str) -> str:
    """How to install what the ``extras`` of kinmerge need, in a form that works however kinmerge
    was installed: the packages themselves (from the installed metadata), then the extra's name.

    kinmerge is not on PyPI, so ``pip install 'kinmerge[plot]'`` would fail; naming the packages
    always works, and ``pip install -e '.[plot]'`` works in a clone.

    Example:
        >>> install_hint("plot")  # doctest: +ELLIPSIS
        "pip install 'matplotlib>=3.8' 'scipy>=1.11' (the kinmerge[plot] extra; in a clone: pip install -e '.[plot]')"
    """
    from importlib import metadata

    try:
        requires = metadata.requires("kinmerge") or []
    except metadata.PackageNotFoundError:
        requires = []
    wanted: list[str] = []
    for line in requires:
        spec, _, marker = line.partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([\w-]+)['\"]", marker)
        if extra and extra.group(1) in extras and not spec.strip().startswith("kinmerge"):
            req = spec.strip().replace(" ", "")
            if req not in wanted:
                wanted.append(req)
    names = ",".join(extras)
    where = f"the kinmerge[{names}] extra; in a clone: pip install -e '.[{names}]'"
    return f"pip install {' '.join(repr(w) for w in wanted)} ({where})" if wanted else f"install {where}"

"""Errors are part of kinmerge's interface.

Every error a user can cause is a ``KinmergeError``: the CLI prints its message as one line and
exits with code 2, never a traceback. Messages name the file or tensor at fault and say what to
do. Each class also inherits the matching builtin, so library callers can catch either.
"""

from __future__ import annotations


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
    """A tensor exists in some models but not in others."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the plain line.
        return str(self.args[0]) if self.args else ""


class NonFiniteError(KinmergeError, ValueError):
    """A tensor holds NaN or Inf, which would silently poison every kinship value."""


class DuplicateModelError(KinmergeError, ValueError):
    """The same model was given twice (same path or same content)."""


class ConfigError(KinmergeError, ValueError):
    """A configuration file or option is invalid."""


class MergeError(KinmergeError, RuntimeError):
    """A merge could not be made (bad recipe, mergekit failure)."""


class EvaluationError(KinmergeError, RuntimeError):
    """An evaluation could not be run (bad task folder, model fails to load)."""


class StoreError(KinmergeError, RuntimeError):
    """The run store is locked by another run, or has an unknown schema."""


class ClusterError(KinmergeError, RuntimeError):
    """A cluster cannot run the steps: unreachable, a node that does not see the shared storage, a
    request no node can meet, or a worker lost more often than its retries allow."""

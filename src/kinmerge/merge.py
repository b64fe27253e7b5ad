"""Merges through mergekit into fresh, content-addressed folders that carry their lineage.

This is the only module that imports mergekit, and it does so inside :func:`merge`, so
``import kinmerge.merge`` costs nothing. A *recipe* is a small frozen dataclass (``Slerp``,
``Linear``, ``TaskArithmetic``, ``Ties``, ``DareTies``, ``Raw``) that renders a mergekit
configuration for its parents; :data:`RECIPES` maps names to them.

A merge is identified by the hash of (the parents' content ids, in order; the base's content id
when the recipe uses one; the recipe's parameters). Its output lives in ``out_root/<id>``:

    out_root/<id>/
      config.json, model*.safetensors, tokenizer files    the merged model (loads with transformers)
      mergekit_config.yml                                  the exact mergekit config that ran
      README.md                                            model card (HF ``base_model`` front matter)
      kinmerge.json                                        lineage: parents, recipe, kinship, versions

``kinmerge.json`` is written last and the folder is moved into place with ``os.replace``, so a
folder with ``kinmerge.json`` is complete; asking for the same merge again returns it untouched.

Example:
    >>> from kinmerge.merge import merge, Slerp
    >>> res = merge(["zoo/math", "zoo/code"], Slerp(), Path("merges"))   # doctest: +SKIP
    >>> res.path                                                        # doctest: +SKIP
    PosixPath('merges/3f9c0a1b2d4e5f60')
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import re
import shutil
import string
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from kinmerge.errors import KinmergeError, MergeError
from kinmerge.sources import HUB_ID, is_hub_id

__all__ = [
    "PAPER_MLP_T",
    "PAPER_SELF_ATTN_T",
    "RECIPES",
    "DareTies",
    "Linear",
    "MergeResult",
    "Raw",
    "Recipe",
    "Slerp",
    "TaskArithmetic",
    "Ties",
    "get_recipe",
    "merge",
    "merge_id",
]

#: The paper's SLERP layer gradient (Hu et al. §3): t over the depth for attention and MLP.
PAPER_SELF_ATTN_T: tuple[float, ...] = (0.0, 0.5, 0.3, 0.7, 1.0)
PAPER_MLP_T: tuple[float, ...] = (1.0, 0.5, 0.7, 0.3, 0.0)

METADATA_FILE = "kinmerge.json"
METADATA_FORMAT = 1
DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")
# Files a tokenizer may consist of; copied from the first parent so the merge loads as-is.
_TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
# mergekit reads "a+b" as model a with LoRA b, and "a@r" as revision r of a.
_UNSAFE_PATH = re.compile(r"[+@\s\"']")
# mergekit's loader cache and the HF offline switch are process-global: one merge at a time.
_MERGE_LOCK = threading.Lock()


# -- recipes ---------------------------------------------------------------------------------


def _float(name: str, value: Any, lo: float | None = None, hi: float | None = None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise MergeError(f"recipe parameter {name}={value!r} is not a number") from None
    if not math.isfinite(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
        bounds = f" in [{lo}, {hi}]" if lo is not None and hi is not None else ""
        raise MergeError(f"recipe parameter {name}={value!r} must be a finite number{bounds}")
    return x


def _weights(name: str, value: Any) -> float | tuple[float, ...]:
    if isinstance(value, (list, tuple)):
        if not value:
            raise MergeError(f"recipe parameter {name} is empty; give one number or one per parent")
        if len(value) == 1:
            return _float(name, value[0])
        return tuple(_float(name, v) for v in value)
    return _float(name, value)


def _per_parent(name: str, value: float | tuple[float, ...], n: int) -> list[float]:
    if isinstance(value, tuple):
        if len(value) != n:
            raise MergeError(f"{name} has {len(value)} values for {n} parents; give one per parent or a single number")
        return list(value)
    return [value] * n


def _check_dtype(dtype: str) -> str:
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(dtype, dtype)
    if dtype not in DTYPES:
        raise MergeError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return dtype


@dataclass(frozen=True)
class Recipe:
    """Base class of merge recipes: a mergekit method plus its parameters.

    Subclasses set ``method`` (the registry name), ``uses_base`` (the recipe needs the shared
    pre-trained base) and the parent count they accept, and implement ``mergekit_config``.
    """

    method: ClassVar[str] = ""
    uses_base: ClassVar[bool] = False
    min_parents: ClassVar[int] = 2
    max_parents: ClassVar[int | None] = None
    #: whether the mergekit method draws random numbers (then ``seed`` makes it reproducible)
    seeded: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """The recipe as plain JSON-ready data: ``{"method": ..., <field>: ...}``. Hashed into the id."""
        out: dict[str, Any] = {"method": self.method}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def mergekit_config(self, parents: Sequence[str], base: str | None = None) -> dict[str, Any]:
        """The mergekit configuration (a dict ``MergeConfiguration`` accepts) for these parents."""
        raise NotImplementedError

    def to_yaml(self, parents: Sequence[str], base: str | None = None) -> str:
        """``mergekit_config`` as YAML, e.g. to run ``mergekit-yaml`` by hand."""
        return _yaml(self.mergekit_config(parents, base))

    def check_parents(self, n: int, base: object | None) -> None:
        """Raise ``MergeError`` unless ``n`` parents (and ``base``) suit this recipe."""
        if n < self.min_parents or (self.max_parents is not None and n > self.max_parents):
            want = (
                f"exactly {self.min_parents}"
                if self.max_parents == self.min_parents
                else f"at least {self.min_parents}"
            )
            raise MergeError(f"{self.method} merges {want} parents, got {n}")
        if self.uses_base and base is None:
            raise MergeError(f"{self.method} needs the parents' shared base model: pass base= (CLI: --base)")

    @property
    def seed_value(self) -> int | None:
        return None


@dataclass(frozen=True)
class Slerp(Recipe):
    """Spherical linear interpolation between two parents; the paper's merge operator.

    By default the paper's layer gradient (Hu et al. 2025, §3): ``t`` runs over the depth through
    ``self_attn`` = [0, 0.5, 0.3, 0.7, 1] for attention tensors and ``mlp`` = [1, 0.5, 0.7, 0.3, 0]
    for MLP tensors, and is ``t_other`` = 0.5 elsewhere. Give ``t`` for one constant value:
    ``t=0`` returns parent A and ``t=1`` parent B. Parent A is mergekit's ``base_model``.
    Reference: https://en.wikipedia.org/wiki/Slerp (mergekit ``slerp``).

    Args:
        t: constant interpolation factor in [0, 1]; ``None`` for the layer gradient.
        self_attn: gradient for tensors whose name contains ``self_attn``.
        mlp: gradient for tensors whose name contains ``mlp``.
        t_other: t for every other tensor (embeddings, norms, head).
        dtype: compute/output dtype: ``bfloat16`` (the paper's), ``float16`` or ``float32``.
    """

    method: ClassVar[str] = "slerp"
    max_parents: ClassVar[int | None] = 2
    t: float | None = None
    self_attn: tuple[float, ...] = PAPER_SELF_ATTN_T
    mlp: tuple[float, ...] = PAPER_MLP_T
    t_other: float = 0.5
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.t is not None:
            set_(self, "t", _float("t", self.t, 0.0, 1.0))
        for name in ("self_attn", "mlp"):
            v = getattr(self, name)
            v = v if isinstance(v, (list, tuple)) else (v,)
            if not v:
                raise MergeError(f"slerp {name} gradient is empty")
            set_(self, name, tuple(_float(name, x, 0.0, 1.0) for x in v))
        set_(self, "t_other", _float("t_other", self.t_other, 0.0, 1.0))
        set_(self, "dtype", _check_dtype(self.dtype))

    def params(self) -> dict[str, Any]:
        if self.t is not None:  # the gradient fields do not apply; keep them out of the id
            return {"method": self.method, "t": self.t, "dtype": self.dtype}
        out = super().params()
        del out["t"]
        return out

    def mergekit_config(self, parents: Sequence[str], base: str | None = None) -> dict[str, Any]:
        if self.t is not None:
            t: Any = self.t
        else:
            t = [
                {"filter": "self_attn", "value": list(self.self_attn)},
                {"filter": "mlp", "value": list(self.mlp)},
                {"value": self.t_other},
            ]
        return {
            "merge_method": "slerp",
            "base_model": parents[0],
            "models": [{"model": p} for p in parents],
            "parameters": {"t": t},
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class Linear(Recipe):
    """Weighted average of the parents (model soups). ``weight``: one number for all parents or
    one per parent; normalised to sum to 1 when ``normalize``.
    Reference: Wortsman et al. 2022, https://arxiv.org/abs/2203.05482 (mergekit ``linear``).
    """

    method: ClassVar[str] = "linear"
    weight: float | tuple[float, ...] = 0.5
    normalize: bool = True
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _weights("weight", self.weight))
        object.__setattr__(self, "normalize", bool(self.normalize))
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))

    def mergekit_config(self, parents: Sequence[str], base: str | None = None) -> dict[str, Any]:
        w = _per_parent("weight", self.weight, len(parents))
        return {
            "merge_method": "linear",
            # linear ignores base_model for the math; naming parent A makes mergekit take the
            # output config from A (otherwise it picks from an unordered set).
            "base_model": parents[0],
            "models": [{"model": p, "parameters": {"weight": x}} for p, x in zip(parents, w)],
            "parameters": {"normalize": self.normalize},
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class _TaskVectorRecipe(Recipe):
    """Shared rendering of the task-vector family (base + combined deltas)."""

    uses_base: ClassVar[bool] = True

    def _method_params(self) -> dict[str, Any]:
        return {}

    def _model_params(self, i: int, n: int) -> dict[str, Any]:
        return {"weight": _per_parent("weight", self.weight, n)[i]}  # type: ignore[attr-defined]

    def mergekit_config(self, parents: Sequence[str], base: str | None = None) -> dict[str, Any]:
        if base is None:
            raise MergeError(f"{self.method} needs the parents' shared base model: pass base= (CLI: --base)")
        n = len(parents)
        cfg: dict[str, Any] = {
            "merge_method": self.method,
            "base_model": base,
            "models": [{"model": p, "parameters": self._model_params(i, n)} for i, p in enumerate(parents)],
        }
        if mp := self._method_params():
            cfg["parameters"] = mp
        cfg["dtype"] = self.dtype  # type: ignore[attr-defined]
        return cfg


@dataclass(frozen=True)
class TaskArithmetic(_TaskVectorRecipe):
    """Base + the weighted sum of the parents' task vectors (deltas from ``base``).
    ``weight``: one number for all parents or one per parent (0.5 each = the mean delta).
    Reference: Ilharco et al. 2023, https://arxiv.org/abs/2212.04089 (mergekit ``task_arithmetic``).
    """

    method: ClassVar[str] = "task_arithmetic"
    weight: float | tuple[float, ...] = 0.5
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", _weights("weight", self.weight))
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))


@dataclass(frozen=True)
class Ties(_TaskVectorRecipe):
    """TIES: trim each task vector to its top ``density`` fraction by magnitude, elect a sign per
    parameter, and average the agreeing deltas (weighted by ``weight``) onto ``base``.
    Reference: Yadav et al. 2023, https://arxiv.org/abs/2306.01708 (mergekit ``ties``).
    """

    method: ClassVar[str] = "ties"
    density: float = 0.5
    weight: float | tuple[float, ...] = 0.5
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        object.__setattr__(self, "density", _float("density", self.density, 0.0, 1.0))
        if self.density == 0.0:
            raise MergeError("density=0 drops every delta; use a value in (0, 1]")
        object.__setattr__(self, "weight", _weights("weight", self.weight))
        object.__setattr__(self, "dtype", _check_dtype(self.dtype))

    def _model_params(self, i: int, n: int) -> dict[str, Any]:
        return {"density": self.density, "weight": _per_parent("weight", self.weight, n)[i]}


@dataclass(frozen=True)
class DareTies(Ties):
    """DARE-TIES: drop each delta entry at random with probability 1 − ``density`` and rescale the
    rest (DARE), then TIES sign election. Random: ``seed`` seeds torch (and Python/numpy) through
    mergekit's ``random_seed``, so the same seed gives the same tensors on the same device.
    Reference: Yu et al. 2024, https://arxiv.org/abs/2311.03099 (mergekit ``dare_ties``).
    """

    method: ClassVar[str] = "dare_ties"
    seeded: ClassVar[bool] = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise MergeError(f"seed={self.seed!r} must be a non-negative integer")

    @property
    def seed_value(self) -> int | None:
        return self.seed


@dataclass(frozen=True)
class Raw(Recipe):
    """Any mergekit YAML, with placeholders for the models: ``${parent_a}``, ``${parent_b}``,
    ``${parent_c}``, ... (in the order the parents are given) and ``${base}``. kinmerge puts the
    resolved local paths in. Use it for methods and options the named recipes do not cover.
    Reference: https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md

    Example YAML::

        merge_method: nuslerp
        models:
          - model: ${parent_a}
            parameters: {weight: 0.7}
          - model: ${parent_b}
            parameters: {weight: 0.3}
        dtype: bfloat16

    Args:
        config: the YAML text.
        seed: mergekit's ``random_seed`` (for random methods such as ``dare_*``).
    """

    method: ClassVar[str] = "raw"
    config: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        data = self._data()
        if not isinstance(data, dict) or "merge_method" not in data:
            raise MergeError("raw recipe: the YAML must be a mapping with a merge_method (a mergekit config)")
        names = self.placeholders()
        parents = sorted(n for n in names if n.startswith("parent_"))
        expected = [f"parent_{chr(ord('a') + i)}" for i in range(len(parents))]
        unknown = names - set(expected) - {"base"}
        if unknown or parents != expected:
            raise MergeError(
                "raw recipe: placeholders must be ${parent_a}, ${parent_b}, ... without gaps, and "
                f"${{base}}; found {', '.join('${' + n + '}' for n in sorted(names)) or 'none'}"
            )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], seed: int | None = None) -> Raw:
        """Read the YAML from ``path``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise MergeError(f"{path}: cannot read the mergekit YAML ({exc.strerror})") from None
        return cls(config=text, seed=seed)

    def _data(self) -> Any:
        import yaml

        try:
            return yaml.safe_load(self.config)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise MergeError(f"raw recipe: invalid YAML ({first}); quote placeholders inside [..] or {{..}}") from None

    def placeholders(self) -> set[str]:
        """The ``${name}`` placeholders the YAML uses."""
        found: set[str] = set()

        def walk(x: Any) -> None:
            if isinstance(x, str):
                for m in string.Template.pattern.finditer(x):
                    if name := (m.group("named") or m.group("braced")):
                        found.add(name)
            elif isinstance(x, dict):
                for k, v in x.items():
                    walk(k)
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)

        walk(self._data())
        return found

    @property
    def uses_base(self) -> bool:  # type: ignore[override]
        return "base" in self.placeholders()

    def check_parents(self, n: int, base: object | None) -> None:
        want = sum(1 for p in self.placeholders() if p.startswith("parent_"))
        if n != want:
            raise MergeError(f"raw recipe uses {want} parent placeholders but {n} parents were given")
        if self.uses_base and base is None:
            raise MergeError("raw recipe uses ${base}: pass base= (CLI: --base)")

    @property
    def seed_value(self) -> int | None:
        return self.seed

    def params(self) -> dict[str, Any]:
        # The parsed config, not the text: comments and layout do not change the id.
        return {"method": self.method, "config": self._data(), "seed": self.seed}

    def mergekit_config(self, parents: Sequence[str], base: str | None = None) -> dict[str, Any]:
        mapping = {f"parent_{chr(ord('a') + i)}": p for i, p in enumerate(parents)}
        if base is not None:
            mapping["base"] = base

        def sub(x: Any) -> Any:
            if isinstance(x, str):
                try:
                    return string.Template(x).substitute(mapping)
                except (KeyError, ValueError) as exc:
                    raise MergeError(f"raw recipe: cannot fill placeholder {exc} in {x!r}") from None
            if isinstance(x, dict):
                return {sub(k): sub(v) for k, v in x.items()}
            if isinstance(x, list):
                return [sub(v) for v in x]
            return x

        return sub(self._data())


#: name -> recipe class; ``get_recipe(name, **params)`` builds one.
RECIPES: dict[str, type[Recipe]] = {
    cls.method: cls for cls in (Slerp, Linear, TaskArithmetic, Ties, DareTies, Raw)
}


def get_recipe(name: str, **params: Any) -> Recipe:
    """Build the recipe registered as ``name``; parameters that are ``None`` take their defaults.

    Raises:
        MergeError: unknown name, or a parameter the recipe does not have or cannot accept.

    Example:
        >>> get_recipe("ties", density=0.3).params()
        {'method': 'ties', 'density': 0.3, 'weight': 0.5, 'dtype': 'bfloat16'}
    """
    try:
        cls = RECIPES[name]
    except KeyError:
        raise MergeError(f"unknown merge method {name!r}; choose one of: {', '.join(RECIPES)}") from None
    given = {k: v for k, v in params.items() if v is not None}
    known = {f.name for f in fields(cls)}
    if extra := sorted(set(given) - known):
        raise MergeError(f"{name} takes no parameter {', '.join(extra)}; it takes: {', '.join(sorted(known))}")
    return cls(**given)


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeResult:
    """A finished merge.

    Attributes:
        id: the merge id (hash of parents' content ids and recipe); also the folder name.
        path: the output folder (a Hugging Face model folder plus ``kinmerge.json``).
        recipe: the recipe that made it.
        reused: True when the folder already existed and nothing was merged.
        metadata: the contents of ``kinmerge.json``.
    """

    id: str
    path: Path
    recipe: Recipe
    reused: bool
    metadata: dict[str, Any] = field(repr=False)

    @property
    def parents(self) -> list[str]:
        """The parents' local paths, in merge order."""
        return [p["path"] for p in self.metadata["parents"]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the CLI's ``--json`` output)."""
        return {"id": self.id, "path": str(self.path), "reused": self.reused, **{
            k: self.metadata.get(k) for k in ("parents", "base", "recipe", "kinship")
        }}


# -- the merge -------------------------------------------------------------------------------


@dataclass
class _Model:
    ref: str  # as the user gave it
    path: Path  # resolved local folder
    content_id: str
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    def info(self) -> dict[str, Any]:
        return {"ref": self.ref, "path": str(self.path), "content_id": self.content_id}


def merge_id(parent_ids: Sequence[str], recipe: Recipe, base_id: str | None = None) -> str:
    """The id of a merge: 16 hex characters of SHA-256 over (parent content ids, base, recipe).

    The base counts only when the recipe uses it. Device and mergekit version do not count.
    """
    key = {
        "parents": list(parent_ids),
        "base": base_id if recipe.uses_base else None,
        "recipe": recipe.params(),
    }
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def merge(
    parents: Sequence[str | os.PathLike[str]],
    recipe: Recipe | None = None,
    out_root: str | os.PathLike[str] = "merges",
    *,
    base: str | os.PathLike[str] | None = None,
    kinship: Mapping[str, Any] | None = None,
    cuda: bool = False,
    out_shard_bytes: int = 5_000_000_000,
    quiet: bool = True,
) -> MergeResult:
    """Merge ``parents`` with ``recipe`` into ``out_root/<id>``, or return that folder if it exists.

    Args:
        parents: local model folders or hub ids (``org/name[@revision]``), in order: parent A
            first (SLERP's ``base_model``; tokenizer and config donor).
        recipe: a :class:`Recipe`; default ``Slerp()`` (the paper's layer gradient, bf16).
        out_root: folder that holds merges; created if missing.
        base: the parents' shared pre-trained base (needed by task_arithmetic, ties, dare_ties;
            ignored, and left out of the id, by recipes that do not use it).
        kinship: the parents' kinship, e.g. ``{"pcc": 0.41}``; recorded in ``kinmerge.json`` and
            the model card (it does not change the id).
        cuda: do the arithmetic on the GPU (and keep intermediates there).
        out_shard_bytes: maximum bytes per output safetensors shard.
        quiet: hide mergekit's progress bars.

    Returns:
        The :class:`MergeResult`; ``reused`` tells whether an existing folder was returned.

    Raises:
        MergeError: bad recipe or parent count, the same model twice, parents of different
            architectures or tensor shapes, no CUDA device with ``cuda=True``, or a mergekit
            failure. No partial folder is left behind.
        SourceError: a parent or base cannot be found.

    Example:
        >>> res = merge(["zoo/math", "zoo/code"], Slerp(t=0.5, dtype="float32"), "merges")  # doctest: +SKIP
        >>> res.id, res.reused                                                              # doctest: +SKIP
        ('3f9c0a1b2d4e5f60', False)
    """
    recipe = recipe if recipe is not None else Slerp()
    if not isinstance(recipe, Recipe):
        raise MergeError(f"recipe must be a kinmerge.merge.Recipe, got {type(recipe).__name__}")
    if isinstance(parents, (str, os.PathLike)):
        raise MergeError("parents must be a list of models, not a single path")
    recipe.check_parents(len(parents), base)
    if base is not None and not recipe.uses_base:
        base = None  # e.g. SLERP: the shared base plays no part in the merge or its id

    models = [_load_model(p) for p in parents]
    base_model = _load_model(base) if base is not None else None
    _check_compatible(models, base_model)

    mid = merge_id([m.content_id for m in models], recipe, base_model.content_id if base_model else None)
    root = Path(out_root).expanduser().absolute()
    final = root / mid
    if (existing := _read_complete(final)) is not None:
        return MergeResult(id=mid, path=final, recipe=recipe, reused=True, metadata=existing)
    if final.exists():  # a folder without kinmerge.json was never completed by us: stale
        shutil.rmtree(final, ignore_errors=True)

    if cuda:
        import torch

        if not torch.cuda.is_available():
            raise MergeError("cuda=True but torch sees no CUDA device; drop --cuda or install a CUDA build of torch")

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{mid}-{uuid.uuid4().hex[:8]}"
    links = Path(tempfile.mkdtemp(prefix="kinmerge-links-"))
    started = time.time()
    try:
        with _MERGE_LOCK:
            names = [_safe_path(m.path, links, f"parent_{i}") for i, m in enumerate(models)]
            base_name = _safe_path(base_model.path, links, "base") if base_model else None
            config = recipe.mergekit_config(names, base_name)
            _run_mergekit(config, tmp, recipe.seed_value, cuda=cuda, out_shard_bytes=out_shard_bytes, quiet=quiet)
        _copy_tokenizer(models[0].path, tmp)
        # Record the real paths, not the temporary safe-name links mergekit saw.
        real = {n: str(m.path) for n, m in zip(names, models)}
        if base_model is not None and base_name is not None:
            real[base_name] = str(base_model.path)
        recorded = _replace_strings(config, real)
        meta = _metadata(mid, models, base_model, recipe, recorded, kinship, time.time() - started)
        _write_text(tmp / "mergekit_config.yml", _yaml(recorded))
        _write_text(tmp / "README.md", model_card(meta))
        _write_text(tmp / METADATA_FILE, json.dumps(meta, indent=2) + "\n")  # last: marks complete
        try:
            os.replace(tmp, final)
        except OSError:
            # Someone else finished the same merge first: theirs is as good as ours.
            if (existing := _read_complete(final)) is not None:
                return MergeResult(id=mid, path=final, recipe=recipe, reused=True, metadata=existing)
            raise
        return MergeResult(id=mid, path=final, recipe=recipe, reused=False, metadata=meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(links, ignore_errors=True)


def _read_complete(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _resolve(ref: str | os.PathLike[str]) -> tuple[str, Path]:
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MergeError(f"{text}: mergekit merges model folders (config.json + weights), not single files")
        return text, path.resolve()
    if HUB_ID.match(text):
        return text, _download(text)
    from kinmerge.errors import SourceError

    raise SourceError(f"{text}: no such folder (and not a hub id like org/name[@revision])")


def _download(ref: str) -> Path:
    from kinmerge.sources import fetch_from_hub

    return fetch_from_hub(ref, ["*.json", "*.safetensors", "tokenizer.model", "*.txt", "*.jinja"])


def _load_model(ref: str | os.PathLike[str]) -> _Model:
    from kinmerge.sources import open_model

    text, path = _resolve(ref)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MergeError(f"{text}: no config.json; mergekit needs a Hugging Face model folder")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MergeError(f"{cfg_file}: not valid JSON ({exc})") from None
    src = open_model(path)
    try:
        shapes = {name: info.shape for name, info in src.tensors.items()}
        cid = src.content_id()
    finally:
        src.close()
    return _Model(ref=text, path=path, content_id=cid, config=config, shapes=shapes)


def _check_compatible(models: list[_Model], base: _Model | None) -> None:
    everyone = [*models, *([base] if base is not None else [])]
    seen: dict[str, _Model] = {}
    for m in models:  # a parent equal to the base is allowed (its delta is zero)
        if (other := seen.get(m.content_id)) is not None:
            same = "is given twice" if other.path == m.path else f"has the same weights as {other.ref}"
            raise MergeError(f"{m.ref} {same}; merging a model with itself changes nothing — pick another model")
        seen[m.content_id] = m
    first = everyone[0]
    arch0 = (first.config.get("architectures"), first.config.get("model_type"))
    for m in everyone[1:]:
        arch = (m.config.get("architectures"), m.config.get("model_type"))
        if arch != arch0:
            raise MergeError(
                f"{m.ref} is {_arch_name(arch)} but {first.ref} is {_arch_name(arch0)}; "
                "merge only models fine-tuned from the same base"
            )
        for name, shape in first.shapes.items():
            got = m.shapes.get(name)
            if got is None:
                raise MergeError(f"{m.ref} has no tensor {name} (present in {first.ref}); the models differ in structure")
            if got != shape and not (_is_vocab_tensor(name) and got[1:] == shape[1:]):
                raise MergeError(
                    f"tensor {name} is {list(shape)} in {first.ref} but {list(got)} in {m.ref}; "
                    "merge only models of the same size and base"
                )


def _is_vocab_tensor(name: str) -> bool:
    # Fine-tunes that add tokens grow only the vocabulary rows; mergekit handles those.
    return "embed" in name or "lm_head" in name or name.endswith("wte.weight")


def _arch_name(arch: tuple[Any, Any]) -> str:
    names, model_type = arch
    return f"{'/'.join(names) if isinstance(names, list) else names} ({model_type})"


def _safe_path(path: Path, links: Path, name: str) -> str:
    """A path mergekit reads literally: symlink paths with ``+``, ``@`` or spaces to a safe name."""
    text = str(path)
    if not _UNSAFE_PATH.search(text):
        return text
    link = links / name
    link.symlink_to(path, target_is_directory=True)
    if _UNSAFE_PATH.search(str(link)):
        raise MergeError(f"the temp folder {links} itself contains '+', '@' or spaces; set TMPDIR to a plain path")
    return str(link)


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Forbid hub access while mergekit runs: every path it gets is local by then.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the module constant is set too.
    """
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:  # pragma: no cover - a dependency of mergekit
        hf_constants = None
    old_const = getattr(hf_constants, "HF_HUB_OFFLINE", None)
    if hf_constants is not None:
        hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if hf_constants is not None:
            hf_constants.HF_HUB_OFFLINE = old_const


def _run_mergekit(
    config: dict[str, Any],
    out: Path,
    seed: int | None,
    *,
    cuda: bool,
    out_shard_bytes: int,
    quiet: bool,
) -> None:
    try:
        with warnings.catch_warnings():
            # mergekit's lazy unpickler touches numpy.core at import; nothing a user can act on.
            warnings.filterwarnings("ignore", message=r"numpy\.core is deprecated", category=DeprecationWarning)
            from mergekit.config import MergeConfiguration
            from mergekit.io.tasks import LoaderCache
            from mergekit.merge import run_merge
            from mergekit.options import MergeOptions
    except ImportError as exc:
        raise MergeError(f"merging needs mergekit ({exc.name} missing): pip install 'kinmerge[merge]'") from None

    try:
        merge_config = MergeConfiguration.model_validate(config)
    except Exception as exc:  # pydantic ValidationError or mergekit's RuntimeError in validators
        raise MergeError(f"invalid mergekit config: {_one_line(exc)}") from None
    options = MergeOptions(
        cuda=cuda,
        low_cpu_memory=cuda,  # keep intermediates on the GPU when using one
        lazy_unpickle=True,
        copy_tokenizer=True,
        write_model_card=False,  # kinmerge writes its own card
        out_shard_size=int(out_shard_bytes),  # bytes, despite mergekit's help text
        random_seed=seed,
        quiet=quiet,
        safe_serialization=True,
    )
    if seed is not None:
        import torch

        torch.manual_seed(seed)
    try:
        with _hub_offline():
            run_merge(merge_config, str(out), options)
    except KinmergeError:
        raise
    except Exception as exc:
        raise MergeError(f"mergekit failed: {_one_line(exc)}") from exc
    finally:
        _forget_loaders(merge_config, LoaderCache)


def _forget_loaders(merge_config: Any, loader_cache: Any) -> None:
    """Drop mergekit's cached readers for our models: it keys them by path and keeps files open."""
    cache = loader_cache()
    for ref in merge_config.referenced_models():
        loader = cache.loaders.pop(ref, None)
        if loader is not None:
            with contextlib.suppress(Exception):
                loader.flush()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _copy_tokenizer(src: Path, dst: Path) -> None:
    # mergekit copies from its base_model (or an arbitrary input); kinmerge promises parent A's.
    if not (src / "tokenizer_config.json").exists():
        return
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def _replace_strings(x: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(x, str):
        return mapping.get(x, x)
    if isinstance(x, dict):
        return {k: _replace_strings(v, mapping) for k, v in x.items()}
    if isinstance(x, list):
        return [_replace_strings(v, mapping) for v in x]
    return x


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("kinmerge", "mergekit", "transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _metadata(
    mid: str,
    models: list[_Model],
    base: _Model | None,
    recipe: Recipe,
    config: dict[str, Any],
    kinship: Mapping[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    if kinship is not None:
        try:
            kinship = json.loads(json.dumps(dict(kinship)))
        except (TypeError, ValueError) as exc:
            raise MergeError(f"kinship must be JSON-ready (numbers, strings): {exc}") from None
    return {
        "format": METADATA_FORMAT,
        "id": mid,
        "parents": [m.info() for m in models],
        "base": base.info() if base else None,
        "recipe": recipe.params(),
        "mergekit_config": config,
        "kinship": kinship,
        "versions": _versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
    }


def _yaml(data: Any) -> str:
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _list(dumper: yaml.SafeDumper, value: list) -> Any:
        flow = bool(value) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flow)

    _Dumper.add_representer(list, _list)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def model_card(meta: Mapping[str, Any]) -> str:
    """The README.md of a merge: Hugging Face front matter (``base_model`` list,
    ``base_model_relation: merge``) and a body with the parents, the recipe and the kinship."""
    parents = meta["parents"]
    front = {
        "base_model": [p["ref"] if is_hub_id(p["ref"]) else p["path"] for p in parents],
        "base_model_relation": "merge",
        "tags": ["merge", "mergekit", "kinmerge"],
        "library_name": "transformers",
    }
    recipe = meta["recipe"]
    lines = [
        "---",
        _yaml(front).rstrip(),
        "---",
        "",
        f"# Merge {meta['id']}",
        "",
        f"A merge of {len(parents)} models with the `{recipe['method']}` recipe, made by "
        "[kinmerge](https://arxiv.org/abs/2410.12613) using [mergekit](https://github.com/arcee-ai/mergekit).",
        "",
        "## Parents",
        "",
        "| # | model | content id |",
        "|---|---|---|",
    ]
    for i, p in enumerate(parents):
        lines.append(f"| {chr(ord('A') + i)} | `{p['ref']}` | `{p['content_id']}` |")
    if meta.get("base"):
        b = meta["base"]
        lines.append(f"| base | `{b['ref']}` | `{b['content_id']}` |")
    lines += ["", "## Recipe", "", "```yaml", _yaml(recipe).rstrip(), "```", ""]
    lines += ["mergekit configuration:", "", "```yaml", _yaml(meta["mergekit_config"]).rstrip(), "```", ""]
    lines += ["## Kinship of the parents", ""]
    kinship = meta.get("kinship")
    if kinship:
        lines += ["| metric | value |", "|---|---|"]
        for k, v in kinship.items():
            lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    else:
        lines.append("Not computed (run `kinmerge kinship` on the parents).")
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    lines += ["", f"Made {meta['created']} with {versions}.", ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")

"""Merge recipes: a mergekit method plus its parameters, as small frozen dataclasses.

A recipe renders the mergekit configuration for its parents (``mergekit_config``) and its own
parameters as plain data (``params``), which are hashed into the merge id: equal recipes give
equal ids. :data:`RECIPES` maps registry names to classes and :func:`get_recipe` builds one
by name. ``Slerp()`` is the paper's operator: SLERP with a layer gradient (§3), in bf16.

Example:
    >>> Slerp(t=0.3).params()
    {'method': 'slerp', 't': 0.3, 'dtype': 'bfloat16'}
    >>> sorted(RECIPES)
    ['dare_ties', 'linear', 'lora', 'raw', 'slerp', 'task_arithmetic', 'ties']
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from kinmerge.errors import MergeError
from kinmerge.merge._yaml import dump_yaml

__all__ = [
    "DTYPES",
    "LORA_COMBINATIONS",
    "PAPER_MLP_T",
    "PAPER_SELF_ATTN_T",
    "RECIPES",
    "DareTies",
    "Linear",
    "Lora",
    "Raw",
    "Recipe",
    "Slerp",
    "TaskArithmetic",
    "Ties",
    "get_recipe",
]

#: The paper's SLERP layer gradient (Hu et al. §3): t over the depth for attention and MLP.
PAPER_SELF_ATTN_T: tuple[float, ...] = (0.0, 0.5, 0.3, 0.7, 1.0)
PAPER_MLP_T: tuple[float, ...] = (1.0, 0.5, 0.7, 0.3, 0.0)

DTYPES: tuple[str, ...] = ("bfloat16", "float16", "float32")


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
    #: the recipe merges LoRA adapters into an adapter (PEFT), not models into a model (mergekit)
    makes_adapter: ClassVar[bool] = False

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
        return dump_yaml(self.mergekit_config(parents, base))

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
        from kinmerge._json import StrictYAMLError, load_yaml_strict

        try:
            return load_yaml_strict(self.config)
        except StrictYAMLError as exc:
            hint = "" if "twice" in str(exc) else "; quote placeholders inside [..] or {..}"
            raise MergeError(f"raw recipe: {exc}{hint}") from None

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


#: PEFT's ``add_weighted_adapter`` combination types (peft 0.21).
LORA_COMBINATIONS: tuple[str, ...] = (
    "cat", "linear", "svd", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd",
    "magnitude_prune", "magnitude_prune_svd",
)
_LORA_DENSITY = ("ties", "dare", "magnitude")  # combinations that prune, so take ``density``


@dataclass(frozen=True)
class Lora(Recipe):
    """LoRA adapters merged into a new adapter by PEFT's ``add_weighted_adapter``: the child stays
    low-rank, so an evolution over adapters keeps adapters. ``combination``: ``cat`` (default:
    exact, the child's delta is ``Σ weight·ΔW``, its rank the sum of the parents'), ``linear``
    (equal ranks; averages A and B separately, a rough approximation), ``svd`` (the exact sum cut
    to rank ``svd_rank``), ``ties``, ``dare_ties``, ``dare_linear``, ``magnitude_prune`` (and their
    ``_svd`` forms; pruning keeps ``density``). ``seed`` seeds the DARE draws.
    For a full model from adapters use a mergekit recipe (CLI: ``--full``).
    Reference: https://huggingface.co/docs/peft/developer_guides/model_merging (peft ``add_weighted_adapter``).
    """

    method: ClassVar[str] = "lora"
    uses_base: ClassVar[bool] = True
    makes_adapter: ClassVar[bool] = True
    combination: str = "cat"
    weight: float | tuple[float, ...] = 0.5
    density: float | None = None
    svd_rank: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.combination not in LORA_COMBINATIONS:
            raise MergeError(f"lora combination {self.combination!r} is not one of {', '.join(LORA_COMBINATIONS)}")
        object.__setattr__(self, "weight", _weights("weight", self.weight))
        prunes = self.combination.startswith(_LORA_DENSITY)
        if self.density is not None:
            if not prunes:
                raise MergeError(f"density applies to the pruning combinations (ties, dare_*, magnitude_prune), "
                                 f"not {self.combination}")
            object.__setattr__(self, "density", _float("density", self.density, 0.0, 1.0))
            if self.density == 0.0:
                raise MergeError("density=0 drops every delta; use a value in (0, 1]")
        elif prunes:
            object.__setattr__(self, "density", 0.5)
        if self.svd_rank is not None and (isinstance(self.svd_rank, bool) or not isinstance(self.svd_rank, int)
                                          or self.svd_rank < 1 or not self.combination.endswith("svd")):
            raise MergeError(f"svd_rank={self.svd_rank!r}: a positive integer, for the svd combinations only")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise MergeError(f"seed={self.seed!r} must be a non-negative integer")

    @property
    def seeded(self) -> bool:  # type: ignore[override]
        return self.combination.startswith("dare")

    @property
    def seed_value(self) -> int | None:
        return self.seed if self.seeded else None

    def params(self) -> dict[str, Any]:
        out = super().params()
        if not self.seeded:
            del out["seed"]  # no random draws: the seed would only split equal merges into two ids
        return out

    def peft_arguments(self, n: int) -> dict[str, Any]:
        """Keyword arguments for ``add_weighted_adapter`` with ``n`` parents."""
        args: dict[str, Any] = {"weights": _per_parent("weight", self.weight, n), "combination_type": self.combination}
        if self.density is not None:
            args["density"] = self.density
        if self.svd_rank is not None:
            args["svd_rank"] = self.svd_rank
        return args

    def mergekit_config(self, parents: Sequence[str], base: str | None = None) -> dict[str, Any]:
        raise MergeError("the lora recipe merges adapters with PEFT, not mergekit; for a full model use a "
                         "mergekit recipe (CLI: --full)")


#: name -> recipe class; ``get_recipe(name, **params)`` builds one.
RECIPES: dict[str, type[Recipe]] = {
    cls.method: cls for cls in (Slerp, Linear, TaskArithmetic, Ties, DareTies, Raw, Lora)
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


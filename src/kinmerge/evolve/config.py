"""The run configuration of ``kinmerge evolve``: a validated pydantic model loaded from YAML.

A run config names the foundation models, their shared base, the strategy, the merge recipe,
the evaluator and where the run lives. Every relative path is resolved against the folder of
the config file, so a config runs the same from any working directory. Errors are one
``ConfigError`` line naming the file and the field, e.g.::

    evolve.yaml: strategy: unknown strategy 'greed'; choose one of greedy, kinship, random

Example (``examples/evolve.yaml``)::

    foundation: [zoo/specialists/add, zoo/specialists/reverse, zoo/specialists/caesar]
    base: zoo/base
    strategy: {name: kinship, k: 3, max_generations: 4}
    merge: {method: slerp}                 # the paper's layer gradient, bf16
    evaluator: {name: builtin, tasks_dir: zoo/tasks, limit: 50}
    kinship_metric: pcc
    seed: 0

Load it with :func:`load_config`; the runner (``kinmerge.evolve.runner.evolve``) takes the result.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kinmerge.errors import ConfigError, KinmergeError, SourceError
from kinmerge.evolve.evaluator_config import EvaluatorConfig, _root, evaluator_key
from kinmerge.evolve.tracking import TrackingConfig
from kinmerge.sources import resolve_ref

if TYPE_CHECKING:
    from kinmerge.evolve.strategies import Strategy
    from kinmerge.merge import Recipe

__all__ = ["EvaluatorConfig", "ExecutorConfig", "MergeConfig", "OutConfig", "RunConfig", "StrategyConfig",
           "TrackingConfig", "evaluator_key", "load_config"]

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def resolve_model_ref(ref: str, root: Path) -> str:
    """A model reference from a config: an existing local folder (made absolute) or a hub id.

    The rule is ``kinmerge.sources.resolve_ref``'s (relative paths under ``root``; a hub-shaped
    reference whose first folder exists under ``root`` is a mistyped path); hub ids are kept as
    they are, not fetched.

    Raises:
        ValueError: neither an existing folder nor a hub id (pydantic reports it for the field).
    """
    try:
        return resolve_ref(ref, root=root, want="folder", fetch=False).ref
    except SourceError as exc:
        raise ValueError(str(exc)) from None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StrategyConfig(BaseModel):
    """``strategy:`` the strategy's registry ``name`` plus its settings, flat.

    Settings (see ``kinmerge.evolve.strategies``): ``k``, ``max_generations`` (the generation
    budget), and for ``kinship``: ``metric``, ``threshold``, ``early_stop``, ``exploration``,
    ``exploration_candidates``; for ``random``: ``seed`` (default: the run's ``seed``).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str

    def settings(self) -> dict[str, Any]:
        """The settings given in the file (everything but ``name``)."""
        return dict(self.model_extra or {})


class MergeConfig(BaseModel):
    """``merge:`` the recipe ``method`` (default ``slerp``: the paper's layer gradient, bf16)
    plus its parameters, flat (e.g. ``t``, ``dtype``, ``weight``, ``density``, ``seed``).

    ``method: raw`` takes ``config_file``: a mergekit YAML with ``${parent_a}``, ``${parent_b}``
    (and ``${base}``) placeholders. ``cuda: true`` does the merge arithmetic on the GPU.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    method: str = "slerp"
    cuda: bool = False

    def params(self) -> dict[str, Any]:
        """The recipe parameters given in the file."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check_recipe(self, info: ValidationInfo) -> MergeConfig:
        params = self.params()
        if self.method == "raw":
            if "config_file" not in params:
                raise ValueError("method raw needs config_file: a mergekit YAML with ${parent_a}, ${parent_b}")
            path = Path(str(params["config_file"])).expanduser()
            path = path if path.is_absolute() else _root(info) / path
            if not path.is_file():
                raise ValueError(f"config_file: no such file {path}")
            if self.model_extra is not None:
                self.model_extra["config_file"] = str(path.resolve())
        _build_recipe(self.method, self.params())
        return self

    def recipe_kwargs(self, seed: int | None = None) -> dict[str, Any]:
        """Keyword arguments for ``get_recipe(method, **kwargs)`` (plain data, picklable).

        A random method (``dare_ties``, ``raw``) without its own ``seed`` gets the run's seed.
        """
        kwargs = self.params()
        if self.method == "raw":
            kwargs["config"] = Path(kwargs.pop("config_file")).read_text(encoding="utf-8")
        from kinmerge.merge import RECIPES

        cls = RECIPES.get(self.method)
        if seed is not None and cls is not None and "seed" in getattr(cls, "__dataclass_fields__", {}):
            kwargs.setdefault("seed", seed)
        return kwargs


def _build_recipe(method: str, params: Mapping[str, Any]) -> Recipe:
    from kinmerge.merge import RECIPES, Raw, get_recipe

    if method not in RECIPES:
        raise ValueError(f"unknown merge method {method!r}; choose one of {', '.join(RECIPES)}")
    try:
        if method == "raw":
            return Raw.from_file(params["config_file"], seed=params.get("seed"))
        return get_recipe(method, **params)
    except KinmergeError as exc:
        raise ValueError(str(exc)) from None


class ExecutorConfig(_Section):
    """``executor:`` where steps run: a registry ``name`` and that executor's settings.

    - ``local`` (default): ``workers: 1`` runs steps in sequence; more run merges and evaluations
      in that many processes.
    - ``ray`` (docs/distributed.md): ``address`` (default: a local cluster of ``num_cpus`` /
      ``num_gpus``), ``merge_cpus``, ``merge_gpus``, ``eval_cpus``, ``eval_gpus`` (each step's
      resource request), ``max_retries`` (a step whose worker died), ``workers`` (steps in
      flight; default: what the cluster holds), ``runtime_env``, ``connect_timeout_s`` (how long
      the address may take to answer; default 30 s), ``merge_resources``, ``eval_resources``
      (custom Ray resources each step asks for, e.g. ``{big_disk: 1}``).

    A setting the named executor does not take is refused, naming the executors that take it.
    """

    name: str = "local"
    workers: int | None = Field(None, ge=1)
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    merge_cpus: float | None = Field(None, ge=0)
    merge_gpus: float | None = Field(None, ge=0)
    eval_cpus: float | None = Field(None, ge=0)
    eval_gpus: float | None = Field(None, ge=0)
    max_retries: int | None = Field(None, ge=0)
    runtime_env: dict[str, Any] | None = None
    connect_timeout_s: float | None = Field(None, gt=0, le=3600)
    merge_resources: dict[str, float] | None = None
    eval_resources: dict[str, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("name", "local") == "local" and data.get("workers") is None:
            data = {**data, "workers": 1}  # the local executor's default, visible in the config
        return data

    @model_validator(mode="after")
    def _check_settings(self) -> ExecutorConfig:
        from kinmerge.evolve.executors import EXECUTORS, executor_settings

        if self.name not in EXECUTORS:
            raise ValueError(f"unknown executor {self.name!r}; choose one of {', '.join(sorted(EXECUTORS))}")
        takes = set(executor_settings(self.name))
        for key in self.settings():
            if key not in takes:
                others = [n for n in sorted(EXECUTORS) if key in executor_settings(n)]
                raise ValueError(f"{key} is a setting of the {' and '.join(others)} executor, not of {self.name}")
        return self

    def settings(self) -> dict[str, Any]:
        """The settings given (``get_executor(name, **settings)``)."""
        return {k: v for k, v in self.model_dump(exclude={"name"}).items() if v is not None}


class OutConfig(_Section):
    """``out:`` where the run lives. ``run_dir`` holds the store (``kinmerge.db``) and the
    merges (``models/<id>``); default ``runs/<config file stem>`` next to the config;
    ``kinmerge evolve --run-dir`` overrides it."""

    run_dir: Path | None = None

    @field_validator("run_dir")
    @classmethod
    def _resolve(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return None
        v = Path(v).expanduser()
        return (v if v.is_absolute() else _root(info) / v).resolve()


class RacingConfig(_Section):
    """``racing:`` score each child on ``first`` examples per task first, then on slices growing by
    ``growth``; stop a child whose upper bound (at ``confidence``) cannot reach the top-k
    (``kinmerge.evolve.racing``). Needs an evaluator that scores parts of a task (builtin)."""

    first: int = Field(50, ge=1)
    growth: float = Field(2.0, gt=1.0)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)


class RunConfig(_Section):
    """A whole run: what to merge, how to choose merges, how to score them, where to record.

    Attributes:
        foundation: the foundation models (>= 2): local folders or hub ids, all fine-tuned
            from ``base``.
        base: the shared pre-trained base (kinship is measured on deltas from it).
        strategy: ``{name, ...settings}``; see :class:`StrategyConfig`.
        merge: ``{method, ...params}``; default SLERP with the paper's layer gradient.
        evaluator: ``{name, ...settings}``; see :class:`EvaluatorConfig`.
        kinship_metric: ``pcc`` (default), ``cs`` or ``ed``: what the strategy and the reports
            use; the runner records all three for every pair it scans.
        seed: the run's seed (random strategy, random merge methods).
        executor: ``{name: local, workers}`` or ``{name: ray, address, merge_gpus, ...}``; see
            :class:`ExecutorConfig`.
        out: ``{run_dir}``.
        run_id: the run's name in the store (default: the strategy name); several runs may
            share one run directory and its merges and evaluations.
        racing: evaluate children in rounds and stop those that cannot reach the top-k (see
            :class:`RacingConfig`); default off (every model scored on every example).
        final_kinship_matrix: record the kinship of every pair of the final pool (the report's
            heatmap); one more scan at the end.
        kinship_source: ``exact`` (default: a scan for every kinship the strategy asks for) or
            ``sketch`` (every model sketched once, kinship estimated from sketches, nothing read
            again: ``kinmerge.evolve.sketch_kinship``, docs/index.md).
        tracking: ``{name: wandb | mlflow | tensorboard, ...}``: watch the run live there (see
            :class:`TrackingConfig`); default none. Not part of the run's identity.
        schedule: ``generational`` (default: the paper's loop, each generation planned once the
            last is scored) or ``steady`` (no barrier: each finished child enters the pool and the
            strategy plans from the pool as it is then; ``kinmerge.evolve.steady``).
        max_in_flight: steady only: children merged or evaluated at once (default: the
            executor's ``workers``). Part of the run's identity, like ``schedule``.
        source: the file it was loaded from (not a YAML field).
    """

    foundation: list[str] = Field(min_length=2)
    base: str
    strategy: StrategyConfig
    merge: MergeConfig = MergeConfig()
    evaluator: EvaluatorConfig
    kinship_metric: Literal["pcc", "cs", "ed"] | None = None
    seed: int = 0
    executor: ExecutorConfig = ExecutorConfig()
    out: OutConfig = OutConfig()
    run_id: str | None = None
    final_kinship_matrix: bool = True
    kinship_source: Literal["exact", "sketch"] = "exact"
    racing: RacingConfig | None = None
    tracking: TrackingConfig | None = None
    schedule: Literal["generational", "steady"] = "generational"
    max_in_flight: int | None = Field(None, ge=1)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("foundation", mode="after")
    @classmethod
    def _resolve_foundation(cls, refs: list[str], info: ValidationInfo) -> list[str]:
        out: list[str] = []
        for i, ref in enumerate(refs):
            try:
                resolved = resolve_model_ref(ref, _root(info))
            except ValueError as exc:
                raise ValueError(f"[{i}] {exc}") from None
            if resolved in out:
                raise ValueError(f"[{i}] {ref!r} is listed twice")
            out.append(resolved)
        return out

    @field_validator("base", mode="after")
    @classmethod
    def _resolve_base(cls, ref: str, info: ValidationInfo) -> str:
        return resolve_model_ref(ref, _root(info))

    @field_validator("run_id")
    @classmethod
    def _check_run_id(cls, v: str | None) -> str | None:
        if v is not None and not _RUN_ID.match(v):
            raise ValueError(f"{v!r}: use letters, digits, '_', '.', '-'")
        return v

    @model_validator(mode="after")
    def _check_whole(self) -> RunConfig:
        if self.base in self.foundation:
            raise ValueError("base: the base is also listed as a foundation model; its delta is zero")
        settings = self.strategy.settings()
        metric = settings.get("metric")
        if metric is not None and self.kinship_metric is not None and metric != self.kinship_metric:
            raise ValueError(
                f"kinship_metric: {self.kinship_metric} differs from strategy.metric ({metric}); "
                "give only one of them"
            )
        try:
            self.build_strategy()
        except KinmergeError as exc:
            raise ValueError(f"strategy: {exc}") from None
        if self.racing is not None and not getattr(type(self.evaluator.build()), "supports_parts", False):
            raise ValueError(f"racing: the {self.evaluator.name} evaluator cannot score part of a task; "
                             "race with the builtin evaluator, or drop racing")
        if self.max_in_flight is not None and self.schedule != "steady":
            raise ValueError("max_in_flight: only a steady run has one (schedule: steady); a generational run "
                             "runs executor.workers steps at once")
        if self.racing is not None and self.schedule == "steady":
            raise ValueError("racing: a race scores a whole generation together; drop racing, or use "
                             "schedule: generational")
        if self.racing is not None and self.evaluator.fitness.to_dict():  # its bounds are on the plain mean
            raise ValueError("racing: a race bounds the plain mean of accuracies; drop racing, or "
                             "evaluator.task_weights and evaluator.direction")
        return self

    # -- derived values --------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        """The kinship metric the run decides and reports with."""
        return self.kinship_metric or str(self.strategy.settings().get("metric", "pcc"))

    @property
    def name(self) -> str:
        """The run id in the store."""
        return self.run_id or self.strategy.name

    def strategy_settings(self) -> dict[str, Any]:
        """The strategy's keyword arguments: the file's settings plus run-level defaults."""
        from kinmerge.evolve.strategies import STRATEGIES

        settings = self.strategy.settings()
        cls = STRATEGIES.get(self.strategy.name)
        fields = getattr(cls, "__dataclass_fields__", {})
        if "metric" in fields and "metric" not in settings:
            settings["metric"] = self.metric
        if "seed" in fields and "seed" not in settings:
            settings["seed"] = self.seed
        return settings

    def build_strategy(self) -> Strategy:
        """The strategy object (``kinmerge.evolve.get_strategy``)."""
        from kinmerge.evolve.strategies import get_strategy

        return get_strategy(self.strategy.name, **self.strategy_settings())

    def shared_paths(self) -> list[str]:
        """The local files and folders every machine that runs steps must see: the base, the
        foundations, the evaluator's task folders (hub ids are fetched by each machine)."""
        from kinmerge.evaluate import PATH_SETTINGS

        extra = self.evaluator.settings()
        paths = [self.base, *self.foundation]
        for key in PATH_SETTINGS:
            value = extra.get(key)
            paths += [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
        return [p for p in paths if Path(p).exists()]

    def run_dir(self, override: str | os.PathLike[str] | None = None) -> Path:
        """The run directory: ``override``, else ``out.run_dir``, else ``runs/<stem>`` by the file."""
        if override is not None:
            return Path(override).expanduser().resolve()
        if self.out.run_dir is not None:
            return self.out.run_dir
        root = self.source.parent if self.source else Path.cwd()
        stem = self.source.stem if self.source else "evolve"
        return (root / "runs" / stem).resolve()

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, root: str | os.PathLike[str] | None = None, source: str | None = None
    ) -> RunConfig:
        """Validate plain data (as read from YAML); relative paths resolve against ``root``.

        Raises:
            ConfigError: an invalid or missing field; the message names ``source`` and the field.
        """
        where = source or "run config"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of fields (foundation, base, strategy, ...), "
                              f"got {type(data).__name__}")
        base_dir = Path(root) if root is not None else Path.cwd()
        try:
            cfg = cls.model_validate(dict(data), context={"root": base_dir})
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_describe(exc)}") from None
        return cfg.model_copy(update={"source": Path(source).resolve()}) if source else cfg


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a run config YAML file.

    Args:
        path: the YAML file; relative paths inside it resolve against its folder.

    Returns:
        The validated :class:`RunConfig`.

    Raises:
        ConfigError: the file is missing or not YAML, or a field is missing or invalid (the
            message names the file and the field, e.g. ``evolve.yaml: strategy.k: ...``).

    Example:
        >>> from pathlib import Path
        >>> import kinmerge
        >>> cfg = load_config(Path(kinmerge.__file__).parents[2] / "examples" / "evolve.yaml")
        >>> cfg.strategy.name, cfg.metric
        ('kinship', 'pcc')
    """
    from kinmerge._json import StrictYAMLError, load_yaml_strict

    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config ({exc.strerror})") from None
    try:
        data = load_yaml_strict(text)  # a key given twice is refused, not silently the last block
    except StrictYAMLError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    if data is None:
        raise ConfigError(f"{file}: the config is empty; it needs foundation, base, strategy and evaluator")
    return RunConfig.from_dict(data, root=file.resolve().parent, source=str(file))


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as one line: ``field.path: message; ...``."""
    allowed = ", ".join(n for n in RunConfig.model_fields if n != "source")
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = str(err.get("msg", ""))
        kind = err.get("type", "")
        if kind == "missing":
            msg = "missing (required)"
        elif kind == "extra_forbidden":
            msg = "unknown field" + (f" (fields: {allowed})" if len(err["loc"]) == 1 else "")
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if not loc:  # a whole-config check names its field first: "strategy: ..."
            head, sep, rest = msg.partition(": ")
            loc, msg = (head, rest) if sep and re.fullmatch(r"[\w.\[\]]+", head) else ("config", msg)
        # A list index right after a field reads better as foundation[1] than foundation.1.
        loc = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", loc)
        if msg.startswith("[") and "]" in msg:  # our own "[i] ..." from a list validator
            idx, _, rest = msg.partition("] ")
            loc, msg = f"{loc}{idx}]", rest
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)

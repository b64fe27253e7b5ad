"""Runs watched in the trackers people use: Weights & Biases, MLflow, TensorBoard.

A long run is watched where people watch training runs, not only with ``kinmerge status`` on the
driver's machine. The run's step log (the store's events) is the one source: :class:`RunTracking`
follows it (``RunStore.listeners``) and sends each event of the run, as it is logged, to a
:class:`Tracker` (one small adapter per library, each importing it only when a run asks for it).
:func:`event_metrics` (pure) says what an event becomes:

- ``evaluate`` / ``evaluate_heldout``: every scored model's ``model/score`` (and each task's
  ``model/task/<task>``) / ``model/heldout_score``;
- ``merge``: the parents' kinship ``merge/parents_<metric>`` (pcc, cs, ed);
- ``generation``: ``gen/best``, ``gen/top_k_kinship``, ``gen/merges`` (in the pool);
- ``plan``: the early-stop decision ``gen/early_stop`` (1 = stop) and ``gen/planned_merges``;
- ``run_finished``: the final summary (best model, scores, top-k, its kinship, stop reason).

Every metric is logged at step = the event's id (it only grows, also across resumes, which W&B
requires) together with ``generation``, the axis to plot against.

A resumed run continues the same tracked run: the tracker's run id and the last event sent are
kept in ``RUN_DIR/tracking/<run id>.<tracker>.json``; on resume the adapter reopens that run and
first sends what a killed process logged but never sent. Failing to *start* tracking fails the
run with one line (rerun to resume); a tracker that breaks later is named in one line and the
run goes on untracked (rerunning sends the rest).

Example:
    >>> event_metrics("evaluate", 2, {"average": 0.5, "scores": {"add": 0.75, "reverse": 0.25}})
    {'model/score': 0.5, 'model/task/add': 0.75, 'model/task/reverse': 0.25, 'generation': 2.0}
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator, model_validator

from kinmerge._io import atomic_write
from kinmerge.errors import ConfigError, KinmergeError, install_hint
from kinmerge.store import RunStore
from kinmerge.store.records import Event

__all__ = ["TRACKERS", "RunTracking", "Tracker", "TrackingConfig", "event_metrics", "open_tracker", "with_tracker"]

#: Each tracker's settings (besides ``name``, ``run_name`` and ``tags``).
TRACKERS: dict[str, tuple[str, ...]] = {
    "wandb": ("project", "entity", "mode", "dir"),
    "mlflow": ("tracking_uri", "experiment"),
    "tensorboard": ("log_dir",),
}
_STATUS = {"run_finished": "finished", "run_failed": "failed", "run_interrupted": "interrupted"}


class TrackingConfig(BaseModel):
    """``tracking:`` where the run is watched live (``kinmerge evolve --track NAME``); default none.

    - ``wandb``: ``project`` (default ``kinmerge``), ``entity``, ``mode`` (``online`` /
      ``offline``; default W&B's own: ``WANDB_MODE``, else online), ``dir`` (default
      ``WANDB_DIR``, else the run directory).
    - ``mlflow``: ``tracking_uri`` (default ``MLFLOW_TRACKING_URI``, else
      ``sqlite:///RUN_DIR/mlflow.db``), ``experiment`` (default ``kinmerge``).
    - ``tensorboard``: ``log_dir`` (default ``RUN_DIR/tensorboard/<run id>``).

    All: ``run_name`` (default the run id), ``tags`` (strings). Relative paths resolve against
    the config's folder. A setting another tracker takes is refused, naming that tracker.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["wandb", "mlflow", "tensorboard"]
    run_name: str | None = None
    tags: dict[str, str] | None = None
    project: str | None = None
    entity: str | None = None
    mode: Literal["online", "offline"] | None = None
    dir: Path | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    log_dir: Path | None = None

    @field_validator("dir", "log_dir")
    @classmethod
    def _resolve(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return None
        v = Path(v).expanduser()
        return v if v.is_absolute() else (Path((info.context or {}).get("root") or Path.cwd()) / v).resolve()

    @model_validator(mode="after")
    def _check_settings(self) -> TrackingConfig:
        for key in self.model_fields_set - {"name", "run_name", "tags"}:
            if getattr(self, key) is not None and key not in TRACKERS[self.name]:
                owner = next(n for n, keys in TRACKERS.items() if key in keys)
                raise ValueError(f"{key} is a setting of the {owner} tracker, not of {self.name}")
        return self


class Tracker(Protocol):
    """One tracked run in a tracking library: what :class:`RunTracking` calls.

    ``id`` names the tracked run in its library (kept to resume it); ``new`` says whether this
    call created it (else it continues one). ``log`` sends numbers at a step; ``summary`` the
    final facts (numbers, strings, lists); ``close`` ends this process's part of the tracked
    run with the run's status (``finished``, ``failed``, ``interrupted``).
    """

    id: str
    new: bool

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...
    def summary(self, values: Mapping[str, Any]) -> None: ...
    def close(self, status: str) -> None: ...


def event_metrics(kind: str, generation: int | None, payload: Mapping[str, Any] | None) -> dict[str, float]:
    """The numbers one step-log event becomes (empty: the event is not tracked as a metric)."""
    p = payload or {}
    out: dict[str, float] = {}
    if kind == "evaluate" and p.get("average") is not None:
        out["model/score"] = float(p["average"])
        out.update({f"model/task/{_key(t)}": float(v) for t, v in sorted((p.get("scores") or {}).items())})
    elif kind == "evaluate_heldout" and p.get("average") is not None:
        out["model/heldout_score"] = float(p["average"])
    elif kind == "merge":
        out.update({f"merge/parents_{m}": float(v) for m, v in sorted((p.get("kinship") or {}).items())
                    if v is not None})
    elif kind == "generation":
        out.update({f"gen/{k}": float(p[k]) for k in ("best", "top_k_kinship", "merges")
                    if p.get(k) is not None})
    elif kind == "plan" and not p.get("kinship_requests"):
        out["gen/early_stop"] = 1.0 if p.get("stop") is not None else 0.0
        out["gen/planned_merges"] = float(len(p.get("merges") or ()))
    if out and generation is not None:
        out["generation"] = float(generation)
    return out


def with_tracker(cfg: Any, track: str | None) -> Any:
    """A run config with the tracker ``--track`` names: ``None`` keeps the config's, ``"none"``
    drops it, and another name replaces it (the config's settings stay only for the same name).

    Example:
        >>> from pathlib import Path
        >>> import kinmerge
        >>> from kinmerge.evolve.config import load_config
        >>> cfg = load_config(Path(kinmerge.__file__).parents[2] / "examples" / "evolve.yaml")
        >>> with_tracker(cfg, "tensorboard").tracking.name, with_tracker(cfg, "none").tracking
        ('tensorboard', None)
    """
    if track is None or (cfg.tracking is not None and cfg.tracking.name == track):
        return cfg
    tracking = None if track == "none" else TrackingConfig.model_validate({"name": track})
    return cfg.model_copy(update={"tracking": tracking})


def _key(name: str) -> str:
    """A metric name every tracker accepts (MLflow allows letters, digits and ``_-./ ``)."""
    return re.sub(r"[^\w\-./ ]", "_", str(name))


# -- the adapters: each imports its library when a run asks for it ----------------------------


def _library(tracker: str, module: str) -> ModuleType:
    """Import a tracker's library, or say in one line which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"tracking: {tracker} needs the {tracker} package, which is not installed: "
                          f"{install_hint('track')}") from None


class _Wandb:
    """Weights & Biases: resumes by id (``resume="allow"``); offline runs sync into one run."""

    def __init__(self, cfg: TrackingConfig, *, run_id: str, run_dir: Path, resume: str | None,
                 config: Mapping[str, Any]) -> None:
        wandb = _library("wandb", "wandb")
        from wandb.sdk.lib.runid import generate_id

        self.new, self.id = resume is None, resume or generate_id()
        folder = cfg.dir or Path(os.environ.get("WANDB_DIR") or run_dir)  # read when called, not at import
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project or "kinmerge", entity=cfg.entity, mode=cfg.mode, dir=str(folder), id=self.id,
            resume="allow", name=cfg.run_name or run_id, tags=[f"{k}:{v}" for k, v in (cfg.tags or {}).items()] or None,
            config=dict(config) if self.new else None, settings=wandb.Settings(console="off"),
        )
        for prefix in ("model", "merge", "gen"):  # charts against generations, not event ids
            self.run.define_metric(f"{prefix}/*", step_metric="generation")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


class _Mlflow:
    """MLflow through its client (never the global active run a notebook may hold)."""

    def __init__(self, cfg: TrackingConfig, *, run_id: str, run_dir: Path, resume: str | None,
                 config: Mapping[str, Any]) -> None:
        _library("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir / 'mlflow.db'}"
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            existing = self._existing(resume)
            if existing is not None:
                self.new, self.id = False, existing
                self.client.update_run(self.id, status="RUNNING")
                return
            name = cfg.experiment or "kinmerge"
            exp = self.client.get_experiment_by_name(name)
            eid = exp.experiment_id if exp is not None else self.client.create_experiment(name)
            tags = {"kinmerge.run_id": run_id, **(cfg.tags or {})}
            run = self.client.create_run(eid, run_name=cfg.run_name or run_id, tags=tags)
            self.new, self.id = True, str(run.info.run_id)
            self.client.log_batch(self.id, params=[Param(k, str(v)[:6000]) for k, v in config.items()])
        except Exception as exc:
            raise _start_error("mlflow", self.uri, exc) from None

    def _existing(self, run: str | None) -> str | None:
        """The stored run, if this tracking URI still has it (else a new one gets the whole log)."""
        if run is None:
            return None
        try:
            return str(self.client.get_run(run).info.run_id)
        except Exception:  # MlflowException(RESOURCE_DOES_NOT_EXIST): another store, or deleted
            return None

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, v, ms, step) for k, v in metrics.items()])

    def summary(self, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        ms, step = int(time.time() * 1000), int(values.get("last_generation") or 0)
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.client.log_batch(
            self.id, metrics=[Metric(f"final/{k}", v, ms, step) for k, v in numbers.items()],
            tags=[RunTag(f"kinmerge.{k}", json.dumps(v) if isinstance(v, list) else str(v))
                  for k, v in values.items() if k not in numbers],
        )

    def close(self, status: str) -> None:
        self.client.set_terminated(self.id, {"finished": "FINISHED", "failed": "FAILED"}.get(status, "KILLED"))


class _TensorBoard:
    """TensorBoard event files; a resumed run writes a new file into the same folder, which
    TensorBoard reads as one run."""

    def __init__(self, cfg: TrackingConfig, *, run_id: str, run_dir: Path, resume: str | None,
                 config: Mapping[str, Any]) -> None:
        _library("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter  # evolve always has torch (merges)

        folder = cfg.log_dir or run_dir / "tensorboard" / run_id
        self.new, self.id = resume is None, str(folder)
        self.writer = SummaryWriter(log_dir=str(folder))
        if self.new:
            self.writer.add_text("config", _table(config), 0)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()  # watched live: the file must not wait for the buffer

    def summary(self, values: Mapping[str, Any]) -> None:
        step = int(values.get("last_generation") or 0)
        for k, v in values.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                self.writer.add_scalar(f"final/{k}", v, step)
        self.writer.add_text("summary", _table(values), step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


_ADAPTERS: dict[str, Callable[..., Tracker]] = {"wandb": _Wandb, "mlflow": _Mlflow, "tensorboard": _TensorBoard}
_MODULES = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}


def open_tracker(cfg: TrackingConfig, *, run_id: str, run_dir: Path, resume: str | None = None,
                 config: Mapping[str, Any] | None = None) -> Tracker:
    """Start (``resume=None``) or continue (``resume``: a tracker run id) the tracked run of a run.

    Raises:
        ConfigError: the tracker's package is missing, or its library refuses to start the run.
    """
    try:
        return _ADAPTERS[cfg.name](cfg, run_id=run_id, run_dir=run_dir, resume=resume, config=config or {})
    except KinmergeError:
        raise
    except Exception as exc:
        raise _start_error(cfg.name, "", exc) from None


def _start_error(tracker: str, where: str, exc: Exception) -> ConfigError:
    first = str(exc).strip().split("\n")[0]
    hint = "; set MLFLOW_ALLOW_FILE_STORE=true or use a sqlite:/// URI" if "MLFLOW_ALLOW_FILE_STORE" in first else ""
    first = first.split(". ")[0] if hint else first
    return ConfigError(f"tracking: {tracker} could not start the run{f' at {where}' if where else ''}: "
                       f"{type(exc).__name__}: {first}{hint}")


def _table(values: Mapping[str, Any]) -> str:
    """Key-value pairs as a markdown table (TensorBoard's text tab renders it)."""
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in values.items())


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``a.b: value`` pairs (trackers' parameters are flat)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = v
    return out


# -- following a run's step log ----------------------------------------------------------------


class RunTracking:
    """Sends a run's step log to its tracker while the run goes; the runner's one collaborator.

    Built before the run starts (a missing package is named then, before any work); the tracked
    run opens at the run's first event, so a run refused at its start leaves no tracked run.

    Args:
        cfg: the run's ``tracking:`` section.
        store: the run's open store (followed through ``store.listeners``).
        run_id, run_dir: which run, where its state file lives.
        config: the run's config (the tracked run's parameters, when it is created).
        say: shows a line to the user (a tracker that broke mid-run).
    """

    def __init__(self, cfg: TrackingConfig, *, store: RunStore, run_id: str, run_dir: Path,
                 config: Mapping[str, Any], say: Callable[[str], None]) -> None:
        _library(cfg.name, _MODULES[cfg.name])
        self.cfg, self.store, self.run_id, self.run_dir = cfg, store, run_id, run_dir
        self.config, self.say = _flat(config), say
        self.state_path = run_dir / "tracking" / f"{run_id}.{cfg.name}.json"
        self.tracker: Tracker | None = None
        self.sent = 0  # the id of the last event sent
        self.off = False  # broken (or failed to start): nothing more is sent by this call
        store.listeners.append(self.on_event)

    @classmethod
    def for_run(cls, cfg: TrackingConfig | None, *, dry_run: bool, **kwargs: Any) -> RunTracking | None:
        """The tracking of a run; ``None`` for no tracker or a dry run (which records nothing)."""
        return None if cfg is None or dry_run else cls(cfg, **kwargs)

    def on_event(self, event: Event) -> None:
        """Send every event of the run up to ``event`` that the tracked run lacks."""
        if self.off or event.run_id != self.run_id:
            return
        if self.tracker is None:
            self._open()
        try:
            todo = [event] if event.id == self.sent + 1 else self.store.events(self.run_id, after=self.sent)
            for e in todo:
                if e.id <= event.id:
                    self._send(e, live=e.id == event.id)
        except Exception as exc:  # the run matters more than its live view
            self.off = True
            self.say(f"tracking: {self.cfg.name} stopped ({type(exc).__name__}: {exc}); the run goes on "
                     "untracked, and the next resume sends the rest")

    def close(self) -> None:
        """End this process's part of the tracked run (a run that did not end says interrupted)."""
        if self.on_event in self.store.listeners:
            self.store.listeners.remove(self.on_event)
        if self.tracker is not None and not self.off:
            self.tracker.close("interrupted")
        self.tracker = None

    def _open(self) -> None:
        state = self._state()
        resume = state.get("id") if state.get("tracker") == self.cfg.name else None
        try:
            self.tracker = open_tracker(self.cfg, run_id=self.run_id, run_dir=self.run_dir, resume=resume,
                                        config=self.config)
        except BaseException:
            self.off = True
            raise
        # A new tracked run gets the whole log; a continued one what it has not had yet.
        self.sent = int(state.get("sent", 0)) if not self.tracker.new else 0
        self._save()

    def _send(self, e: Event, *, live: bool) -> None:
        """Send one event; ``live``: it is happening now (an end replayed from the log, e.g. a run
        finished before its budget was raised, ends nothing and has no summary to give)."""
        assert self.tracker is not None
        metrics = event_metrics(e.kind, e.generation, e.payload)
        if metrics:
            self.tracker.log(metrics, step=e.id)
        if e.kind == "run_finished" and live:
            self.tracker.summary(self._final())
        self.sent = e.id
        self._save()
        if e.kind in _STATUS and live:
            self.tracker.close(_STATUS[e.kind])
            self.tracker = None
            self.off = True  # this call's run has ended

    def _final(self) -> dict[str, Any]:
        """The final summary: the run's best model, its scores, the top-k and why it stopped."""
        from kinmerge.evolve.summary import summarize  # the summary reads the whole store: only at the end

        s = summarize(self.store, self.run_id, self.run_dir)
        best = s.best
        values: dict[str, Any] = {
            "status": s.status, "stop": s.stop or "", "last_generation": s.generation, "merges": s.merges,
            "top_k": list(s.top_k), "top_k_kinship": s.top_k_kinship, "best_id": best.id if best else "",
            "best_score": best.score if best else None, "best_heldout_score": best.heldout_score if best else None,
        }
        return {k: v for k, v in values.items() if v is not None}

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.state_path}: unreadable tracking state ({exc}); delete it to start a new "
                              "tracked run that gets the whole step log") from None
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        assert self.tracker is not None
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, json.dumps({"tracker": self.cfg.name, "id": self.tracker.id, "sent": self.sent}),
                     fsync=False)  # lost on a power cut at worst: a resume then sends some events again

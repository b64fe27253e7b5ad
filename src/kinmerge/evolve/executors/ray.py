"""The Ray executor: an evolution run's steps as Ray tasks, each with its own resource request.

``executor: {name: ray, ...}`` in a run config sends hashes, kinship scans, merges and
evaluations to a Ray cluster (docs/distributed.md). The driver — the ``kinmerge evolve`` process —
stays the only writer of the run store: tasks return the small records of
:mod:`kinmerge.evolve.steps` and the driver records each as it arrives. Merges and evaluations are
pipelined by :meth:`BaseExecutor.chain`: a child's evaluation is submitted as soon as its merge is
recorded, while other merges of the generation still run.

Why it is safe to retry: every step is keyed by content and writes its output completely before
returning (a merge: temp folder, then rename), so a task whose worker died (``SIGKILL``, OOM, a
preempted node) is simply run again by Ray, ``max_retries`` times at most. A step that raises
fails at once with its own one-line error; retrying would not change it.

Example (a local cluster of 2 CPUs; a real one: ``address: auto``)::

    executor: {name: ray, num_cpus: 2, merge_gpus: 0, eval_gpus: 0}
"""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kinmerge._ray import PROBE_TIMEOUT_S, RayCluster
from kinmerge.errors import ClusterError, ConfigError
from kinmerge.evolve.executors.base import BaseExecutor
from kinmerge.evolve.steps import describe, step_kind

__all__ = ["RayExecutor", "look_at"]

_PROBE_PREFIX = ".kinmerge-probe-"


class RayExecutor(BaseExecutor):
    """Steps as tasks on a Ray cluster, ``workers`` in flight at once, pipelined by ``chain``.

    Args:
        workers: steps in flight at once; default: as many merges or evaluations (whichever
            fits more) as the cluster's CPUs and GPUs hold when the run starts.
        address: an existing cluster (``auto``, ``HOST:PORT``, ``ray://HOST:10001``) or ``local``;
            default: ``RAY_ADDRESS``, else the cluster ``ray start`` started on this machine, else
            a local cluster started for the run and stopped after it.
        num_cpus, num_gpus: the size of a local cluster of the run's own (default: the machine's).
        merge_cpus, merge_gpus: what each merge asks for (e.g. ``merge_gpus: 1`` with
            ``merge: {cuda: true}``).
        eval_cpus, eval_gpus: what each evaluation asks for (e.g. ``eval_gpus: 1`` with the
            evaluator's ``device: cuda``). Hashes and kinship scans ask for one CPU.
        merge_resources, eval_resources: custom Ray resources each merge or evaluation asks for
            (``{"big_disk": 1}``: only nodes started with ``ray start --resources='{"big_disk": 1}'``
            run it).
        max_retries: how often a step whose worker died is run again before the run fails.
        connect_timeout_s: how long the cluster's address may take to answer before the run
            fails in one line naming it (default ``KINMERGE_RAY_CONNECT_TIMEOUT``, else 30 s).
        runtime_env: Ray's runtime environment for the run's tasks (``env_vars``, ``pip``, ...).

    Raises:
        ConfigError: a negative request or count; Ray not installed (on first use).
        ClusterError: the cluster is unreachable, or no node can meet a request (on first use).
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, num_cpus: int | None = None,
                 num_gpus: int | None = None, merge_cpus: float = 1.0, merge_gpus: float = 0.0,
                 eval_cpus: float = 1.0, eval_gpus: float = 0.0, max_retries: int = 3,
                 runtime_env: Mapping[str, Any] | None = None, connect_timeout_s: float | None = None,
                 merge_resources: Mapping[str, float] | None = None,
                 eval_resources: Mapping[str, float] | None = None) -> None:
        for label, value in (("workers", workers), ("num_cpus", num_cpus)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"executor {label} must be an integer >= 1, got {value!r}")
        for label, value in (("num_gpus", num_gpus), ("max_retries", max_retries)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"executor {label} must be an integer >= 0, got {value!r}")
        requests = {"merge": {"CPU": merge_cpus, "GPU": merge_gpus}, "evaluate": {"CPU": eval_cpus, "GPU": eval_gpus}}
        for kind, custom in (("merge", merge_resources), ("evaluate", eval_resources)):
            for res in custom or {}:
                if not isinstance(res, str) or not res or res in ("CPU", "GPU", "memory", "object_store_memory"):
                    short = "eval" if kind == "evaluate" else kind
                    raise ConfigError(f"executor {short}_resources: {res!r} is not a custom resource name; "
                                      f"ask for CPUs and GPUs with {short}_cpus and {short}_gpus")
            requests[kind].update(custom or {})
        for kind, req in requests.items():
            for res, amount in req.items():
                number = isinstance(amount, int | float) and not isinstance(amount, bool)
                if not number or not amount >= 0 or math.isinf(amount):
                    raise ConfigError(f"executor {kind} {res} request must be a number >= 0, got {amount!r}")
        self._workers = workers
        self.max_retries = max_retries
        self.requests = requests
        self.cluster = RayCluster(address, num_cpus=num_cpus, num_gpus=num_gpus,
                                  runtime_env=dict(runtime_env) if runtime_env is not None else None,
                                  connect_timeout_s=connect_timeout_s)
        self._connected = False

    # -- the cluster ------------------------------------------------------------------------------

    def _request(self, fn: Callable[[Any], Any]) -> dict[str, float]:
        return self.requests.get(step_kind(fn), {"CPU": 1.0, "GPU": 0.0})

    @staticmethod
    def _custom(req: Mapping[str, float]) -> dict[str, float]:
        return {r: v for r, v in req.items() if r not in ("CPU", "GPU") and v}

    def _connect(self) -> None:
        """Connect once and check that some node can run each kind of step (else it would wait forever)."""
        if self._connected:
            return
        self.cluster.connect()
        self._connected = True
        nodes = self.cluster.nodes()
        for kind, req in self.requests.items():
            if not any(all(n["resources"].get(r, 0.0) >= v for r, v in req.items() if v) for n in nodes):
                asked = ", ".join(f"{v:g} {r}" for r, v in req.items() if v) or "nothing"
                have = "; ".join(f"{n['ip']}: " + ", ".join(
                    f"{n['resources'].get(r, 0):g} {r}" for r in req if r in ("CPU", "GPU") or req[r]) for n in nodes)
                short = "eval" if kind == "evaluate" else kind
                raise ClusterError(f"no node of the Ray cluster can run a {kind} step ({asked} asked; nodes: {have}); "
                                   f"lower {short}_cpus/{short}_gpus/{short}_resources or add a node that has them")

    @property
    def workers(self) -> int:
        """Steps in flight: the setting, else how many of the larger kind fit the cluster at start."""
        if self._workers is None:
            self._connect()
            fits = [min((int(self.cluster.total(r) // v) for r, v in req.items() if v), default=1)
                    for req in self.requests.values()]
            self._workers = max(1, *fits)
        return self._workers

    # -- the primitives ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], Any], task: Any) -> Hashable:
        self._connect()
        req = self._request(fn)
        ref: Hashable = self.cluster.submit(fn, task, name=getattr(fn, "__name__", "step"), num_cpus=req["CPU"],
                                            num_gpus=req["GPU"], resources=self._custom(req),
                                            max_retries=self.max_retries)
        return ref

    def _wait(self, handles: Sequence[Hashable]) -> Iterable[Hashable]:
        return self.cluster.wait(handles)

    def _result(self, handle: Hashable, fn: Callable[[Any], Any], task: Any) -> Any:
        return self.cluster.result(handle, describe(task), retries=self.max_retries)

    def _cancel(self, handle: Hashable) -> None:
        self.cluster.cancel(handle)

    def close(self) -> None:
        """Stop the local cluster this executor started, or disconnect from the cluster."""
        self.cluster.close()
        self._connected = False

    # -- shared storage ---------------------------------------------------------------------------

    def check_storage(self, read: Sequence[str], write: str | None = None) -> None:
        """Run one tiny task on every node that can run steps: it must see each ``read`` path as
        this process does (same file names and sizes) and write a file into ``write`` that this
        process then sees.

        Raises:
            ClusterError: one line naming the node and the path it does not share.
        """
        self._connect()
        token = secrets.token_hex(8)
        mine = look_at(read)
        for path, seen in mine.items():
            if isinstance(seen, str):
                raise ClusterError(f"{path}: {seen} on this machine")
        if write is not None:
            Path(write).mkdir(parents=True, exist_ok=True)
        nodes = [n for n in self.cluster.nodes() if _runs_steps(n["resources"], self.requests.values())]
        refs = [self.cluster.submit(_probe, (list(read), write, token), name="kinmerge_storage_probe", num_cpus=0,
                                    node=n["id"]) for n in nodes]
        failed: ClusterError | None = None
        try:
            for node, ref in zip(nodes, refs, strict=True):  # every probe ends before its files are removed
                name = f"{node['ip']} (id {node['id'][:8]})"  # several nodes may share a machine, so an IP
                seen = self.cluster.result(ref, f"storage check on node {name}", timeout=PROBE_TIMEOUT_S)
                try:
                    _compare(name, mine, seen, write, token)
                except ClusterError as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed
        finally:
            if write is not None:
                for leftover in Path(write).glob(f"{_PROBE_PREFIX}{token}-*"):
                    leftover.unlink(missing_ok=True)


def _runs_steps(has: Mapping[str, float], requests: Iterable[Mapping[str, float]]) -> bool:
    """Whether a node with resources ``has`` can run some step: a hash or kinship scan (1 CPU),
    or a merge or evaluation whose whole request it meets.

    Example:
        >>> _runs_steps({"CPU": 0, "GPU": 1}, [{"CPU": 0, "GPU": 1}]), _runs_steps({"GPU": 1}, [{"CPU": 1}])
        (True, False)
    """
    if has.get("CPU", 0.0) >= 1:
        return True
    return any(all(has.get(r, 0.0) >= v for r, v in req.items() if v) for req in requests)


def look_at(paths: Sequence[str]) -> dict[str, list[tuple[str, int]] | str]:
    """What this machine sees at each path: a folder's files (name, size), a file's; or why not.

    Example:
        >>> look_at(["/nonexistent/kinmerge"])["/nonexistent/kinmerge"]
        'cannot read it (No such file or directory)'
    """
    out: dict[str, list[tuple[str, int]] | str] = {}
    for p in paths:
        path = Path(p)
        try:
            files = sorted(c for c in path.iterdir() if c.is_file()) if path.is_dir() else [path]
            out[p] = [(f.name, f.stat().st_size) for f in files]
            if files:
                with files[0].open("rb") as fh:  # listed is not readable: read a byte
                    fh.read(1)
        except OSError as exc:
            out[p] = f"cannot read it ({exc.strerror or exc})"
    return out


def _probe(args: tuple[list[str], str | None, str]) -> dict[str, Any]:
    """On a node: what it sees at the read paths, and the probe file it wrote (or why not)."""
    read, write, token = args
    wrote: str | None = None
    if write is not None:
        name = f"{_PROBE_PREFIX}{token}-{socket.gethostname()}-{os.getpid()}"
        try:
            (Path(write) / name).write_text(token, encoding="utf-8")
            wrote = name
        except OSError as exc:
            wrote = f"!cannot write into it ({exc.strerror or exc})"
    return {"seen": look_at(read), "wrote": wrote}


def _compare(node: str, mine: dict[str, Any], theirs: dict[str, Any], write: str | None, token: str) -> None:
    hint = "put the models and the run directory on storage every node mounts at the same path (docs/distributed.md)"
    for path, seen in mine.items():
        other = theirs["seen"].get(path)
        if isinstance(other, str):
            raise ClusterError(f"{path}: the Ray node {node} {other}; {hint}")
        if [tuple(x) for x in other or []] != seen:
            raise ClusterError(f"{path}: the Ray node {node} sees other files there than this machine; {hint}")
    if write is None:
        return
    wrote = theirs["wrote"]
    if wrote is None or wrote.startswith("!"):
        raise ClusterError(f"{write}: the Ray node {node} {(wrote or '!cannot write')[1:]}; {hint}")
    probe = Path(write) / wrote
    try:
        ok = probe.read_text(encoding="utf-8") == token
    except OSError:
        ok = False
    if not ok:
        raise ClusterError(f"{write}: a file the Ray node {node} wrote there does not appear on this machine; {hint}")

"""The one place kinmerge talks to Ray: connect (or start a local cluster), run a function as a
task with a resource request, and bring its errors back as kinmerge's own.

Used by the Ray executor of evolution runs (:mod:`kinmerge.evolve.executors.ray`) and by the
sharded kinship scan (:mod:`kinmerge.scan.shards`). Ray is imported here, when first needed, never
by ``import kinmerge``.

Why errors are translated: ``ray.get`` raises a ``RayTaskError`` whose message is the worker's
whole traceback. A step's own error (``MergeError``, ``SourceError``, ...) is re-raised as itself,
so the CLI prints its one line; a lost worker, node or object becomes one ``ClusterError`` line
naming the task.

Example:
    >>> # not run here: starts a Ray cluster (tests/test_ray.py does)
    >>> with RayCluster(num_cpus=2) as cluster:                       # doctest: +SKIP
    ...     ref = cluster.submit(abs, -3, name="abs", num_cpus=1)
    ...     cluster.result(ref, "abs of -3")
    3
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kinmerge.errors import ClusterError, ConfigError, install_hint

__all__ = ["RayCluster", "import_ray", "where_am_i"]

#: How long a probe or a connection may take before the cluster is declared unreachable.
PROBE_TIMEOUT_S = 120.0
#: How often a wait checks that the cluster's head still answers, and how long it may not.
HEAD_CHECK_S = 2.0
HEAD_LOST_S = 6.0
#: How long connecting to a cluster's address may take (``KINMERGE_RAY_CONNECT_TIMEOUT`` overrides it).
CONNECT_TIMEOUT_S = 30.0


def import_ray() -> Any:
    """``import ray``, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the Ray executor and --ray need the ray package: {install_hint('ray')}") from None
    return ray


def _call(fn: Callable[[Any], Any], task: Any) -> Any:
    """What every task runs: one step on its task (the step travels by reference).

    A step's record (a dict) comes back with ``node``, where it ran: the Ray node's IP and id,
    and the GPUs Ray gave it (``CUDA_VISIBLE_DEVICES``, when set), for the run's events.
    """
    out = fn(task)
    if isinstance(out, dict):
        out = {**out, "node": where_am_i()}
    return out


def where_am_i() -> dict[str, str]:
    """The Ray node this task runs on (``ip``, ``id``) and its GPUs (``gpus``: ``CUDA_VISIBLE_DEVICES``)."""
    import ray

    ctx = ray.get_runtime_context()
    here = {"ip": ray.util.get_node_ip_address(), "id": ctx.get_node_id()}  # type: ignore[no-untyped-call]
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus is not None:
        here["gpus"] = gpus
    return here


class RayCluster:
    """A connection to a Ray cluster: an existing one (``address``), the one this process is
    already connected to, or a local one started here (``address`` None or ``"local"``).

    A cluster this object started or connected to is shut down or disconnected by :meth:`close`;
    one that was already connected (``ray.init`` called by the user) is left as it was.

    Args:
        address: ``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:10001"`` or ``"local"`` (a new local
            cluster); None: as Ray decides — ``RAY_ADDRESS`` if set, else the cluster ``ray start``
            started on this machine, else a new local cluster.
        num_cpus, num_gpus: the size of a new local cluster (default: this machine's); given
            without an address, they start one even where ``ray start`` has run.
        runtime_env: Ray's runtime environment for this job (``env_vars``, ``py_modules``, ...).
        connect_timeout_s: how long the cluster's address may take to answer before it is
            declared unreachable (default ``KINMERGE_RAY_CONNECT_TIMEOUT``, else 30 s). Ray itself
            retries an address that does not answer for minutes, printing its own log lines.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
                 runtime_env: dict[str, Any] | None = None, connect_timeout_s: float | None = None) -> None:
        if connect_timeout_s is not None and (isinstance(connect_timeout_s, bool)
                                              or not isinstance(connect_timeout_s, int | float)
                                              or not 0 < connect_timeout_s < float("inf")):
            raise ConfigError(f"the Ray connect timeout must be a number of seconds > 0, got {connect_timeout_s!r}")
        self.connect_timeout_s = connect_timeout_s
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.runtime_env = runtime_env
        self._ray: Any = None
        self._owned = False
        self._call: Any = None
        self._gcs: str | None = None
        self._head_lost = False

    # -- connection -------------------------------------------------------------------------------

    def connect(self) -> Any:
        """Connect (once); return the ``ray`` module."""
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if self.address is not None:  # an address given must answer, even where this process is connected
            self._probe(self.address)
        if not ray.is_initialized():
            sized = self.num_cpus is not None or self.num_gpus is not None
            address = self.address
            if sized and address is None and not os.environ.get("RAY_ADDRESS"):
                address = "local"  # a size was asked for: a cluster of our own, not one found on this machine
            elif sized and address != "local":
                raise ConfigError("num_cpus and num_gpus size a local Ray cluster; an existing cluster at "
                                  f"{address or os.environ.get('RAY_ADDRESS')} has its own size")
            kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False,
                                      "runtime_env": self.runtime_env, "include_dashboard": False}
            if sized:
                kwargs.update(num_cpus=self.num_cpus, num_gpus=self.num_gpus)
            if self.address is None:
                self._probe(address)  # RAY_ADDRESS
            existing = (address or os.environ.get("RAY_ADDRESS")) not in (None, "local")
            try:
                with _quiet_core_logs() if existing else contextlib.nullcontext():
                    ray.init(address=address, **kwargs)
            except Exception as exc:
                with contextlib.suppress(Exception):  # stop what a failed start left running
                    ray.shutdown()
                where = address or os.environ.get("RAY_ADDRESS")
                if where is None or where == "local":
                    raise ClusterError(f"could not start a local Ray cluster ({_first_line(exc)}); see Ray's logs "
                                       "(/tmp/ray/session_latest/logs), or start one with `ray start --head` and "
                                       "give its address") from None
                raise ClusterError(f"cannot connect to the Ray cluster at {where} ({_first_line(exc)}); start "
                                   "one with `ray start --head` and give its address") from None
            self._owned = True
        self._ray = ray
        self._call = ray.remote(_call)
        self._gcs = ray.get_runtime_context().gcs_address
        return ray

    def _timeout(self) -> float:
        if self.connect_timeout_s is not None:
            return float(self.connect_timeout_s)
        text = os.environ.get("KINMERGE_RAY_CONNECT_TIMEOUT")
        if text is None:
            return CONNECT_TIMEOUT_S
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value < float("inf"):
            raise ConfigError(f"KINMERGE_RAY_CONNECT_TIMEOUT must be a number of seconds > 0, got {text!r}")
        return value

    def _probe(self, address: str | None) -> None:
        """Fail in seconds, in one line naming the address, when nothing answers there.

        Only a ``HOST:PORT`` (or ``ray://HOST:PORT``) address is probed, given or from
        ``RAY_ADDRESS``; ``auto`` and ``local`` are found or started by Ray on this machine.
        """
        where = address if address not in (None, "auto") else os.environ.get("RAY_ADDRESS")
        target = _host_port(where)
        if target is None:
            return
        timeout = self._timeout()
        try:
            with socket.create_connection(target, timeout=timeout):
                pass
        except TimeoutError:
            raise ClusterError(f"the Ray cluster at {where} did not answer within {timeout:g} s; check the "
                               "address and that `ray start --head` runs there (KINMERGE_RAY_CONNECT_TIMEOUT "
                               "sets the wait)") from None
        except OSError as exc:
            raise ClusterError(f"cannot reach the Ray cluster at {where} ({exc.strerror or exc}); check the address "
                               "and that `ray start --head` runs there") from None

    def _head_lost_error(self) -> ClusterError:
        self._head_lost = True  # nothing to shut down or disconnect from any more
        return ClusterError(f"the head node of the Ray cluster ({self._gcs}) stopped answering; restart the "
                            "cluster (`ray start --head`) and rerun the same command to resume")

    def _head_answers(self) -> bool:
        """Whether the cluster's GCS (on the head node) still accepts connections."""
        target = _host_port(self._gcs)
        if target is None:
            return True
        try:
            with socket.create_connection(target, timeout=HEAD_CHECK_S):
                return True
        except OSError:
            return False

    def close(self) -> None:
        """Shut down the local cluster this object started, or disconnect (idempotent)."""
        if self._ray is not None and self._owned and not self._head_lost:
            self._ray.shutdown()
        self._ray = None
        self._owned = False

    def __enter__(self) -> RayCluster:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the cluster has ---------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """The alive nodes: ``{"id", "ip", "resources"}`` each."""
        ray = self.connect()
        return [{"id": n["NodeID"], "ip": n.get("NodeManagerAddress", "?"), "resources": dict(n.get("Resources", {}))}
                for n in ray.nodes() if n.get("Alive")]

    def total(self, resource: str) -> float:
        """The cluster's total of ``resource`` (``"CPU"``, ``"GPU"``)."""
        return float(self.connect().cluster_resources().get(resource, 0.0))

    # -- tasks ------------------------------------------------------------------------------------

    def submit(self, fn: Callable[[Any], Any], task: Any, *, name: str, num_cpus: float = 1, num_gpus: float = 0,
               resources: dict[str, float] | None = None, max_retries: int = 0, node: str | None = None) -> Any:
        """Run ``fn(task)`` as a task (the worker's process title is ``ray::<name>``); its ref.

        ``resources``: custom resources it asks for (``{"node_a": 1}``: only a node started with
        ``--resources='{"node_a": 1}'`` runs it); ``node``: a node id it must run on.
        """
        self.connect()
        options: dict[str, Any] = {"name": name, "num_cpus": num_cpus, "num_gpus": num_gpus,
                                   "max_retries": max_retries}
        if resources:
            options["resources"] = dict(resources)
        if node is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
        return self._call.options(**options).remote(fn, task)

    def wait(self, refs: Sequence[Any]) -> list[Any]:
        """Block until at least one of ``refs`` is finished; the finished ones.

        Raises:
            ClusterError: the cluster's head (its GCS) stopped answering while waiting. Ray itself
                would wait a minute, then end this process with its own log lines.
        """
        ray = self.connect()
        lost_since: float | None = None
        while True:
            ready, rest = ray.wait(list(refs), num_returns=1, timeout=HEAD_CHECK_S)
            if ready:
                break
            if self._head_answers():
                lost_since = None
                continue
            now = time.monotonic()
            lost_since = lost_since or now
            if now - lost_since >= HEAD_LOST_S:
                raise self._head_lost_error()
        if rest:  # the others finished by now too: handed over together, in a stable order
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return list(ready)

    def result(self, ref: Any, what: str, *, retries: int = 0, timeout: float | None = None) -> Any:
        """The value of a finished task; its own error re-raised, Ray's as one ``ClusterError``.

        Args:
            what: the task in words, for the message (``merge of A + B``).
            retries: how often Ray was allowed to retry it (said in the message).
        """
        ray = self.connect()
        from ray import exceptions as rex

        try:
            return ray.get(ref, timeout=timeout)
        except rex.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception) and not isinstance(cause, rex.RayError):
                raise cause from None
            raise ClusterError(f"{what}: failed on a Ray worker ({_first_line(exc)})") from None
        except rex.GetTimeoutError:
            raise ClusterError(f"{what}: no answer from the Ray cluster within {timeout:.0f} s; check that its "
                               "nodes are alive (`ray status`)") from None
        except rex.RayError as exc:
            if not self._head_answers():  # the task died with the head: say so, not "a worker was lost"
                raise self._head_lost_error() from None
            tries = f"{retries + 1} attempts" if retries else "no retries allowed"
            raise ClusterError(f"{what}: the Ray worker running it was lost ({type(exc).__name__}; {tries}); "
                               "see the node's Ray logs (`ray logs`), or raise max_retries") from None

    def cancel(self, ref: Any) -> None:
        """Cancel a task that is no longer wanted (best effort)."""
        if self._ray is not None:
            with contextlib.suppress(Exception):  # already finished or gone: nothing to cancel
                self._ray.cancel(ref)


@contextlib.contextmanager
def _quiet_core_logs() -> Iterator[None]:
    """Ray's C++ core in this process logs only fatal errors (it starts during ``ray.init``).

    Why: when a node or the head is lost, the driver's core prints lines of its own
    (``task_manager.cc: Failed to push error to driver ...``) before kinmerge's one ``Error:``
    line says what happened. ``RAY_BACKEND_LOG_LEVEL`` is read once, when the core starts, which
    itself announces the level on stderr: that line is dropped (stderr goes to ``/dev/null``
    while it connects). Only for a cluster that exists already, so no Ray process started here
    inherits the level (a local cluster's raylet keeps its logs). A level the user set is kept.
    """
    if "RAY_BACKEND_LOG_LEVEL" in os.environ:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
        os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)


def _host_port(address: str | None) -> tuple[str, int] | None:
    """``("host", port)`` of a ``HOST:PORT`` or ``ray://HOST:PORT`` address; ``None`` otherwise.

    Example:
        >>> _host_port("ray://10.0.0.5:10001"), _host_port("127.0.0.1:1"), _host_port("auto")
        (('10.0.0.5', 10001), ('127.0.0.1', 1), None)
    """
    if not address or address in ("auto", "local"):
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]

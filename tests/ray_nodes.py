"""A Ray cluster of several nodes on this one machine, started the way a real one is: ``ray start``.

Each node is its own ``ray start --block`` process in its own session (process group): its
raylet, agents and task workers all belong to that group, so ``kill(node)`` SIGKILLs a whole
node at once, as a lost machine would be, and ``stop`` ends only the nodes started here (never
``ray stop``, which would end every Ray process of the user). All nodes share one temp folder
under ``/tmp`` of their own, so other Ray clusters on the machine are neither found nor touched.

Every node gets its own ports (the dashboard agent's default port is fixed: two nodes on one
machine would fight over it) and custom resources (``{"node_a": 1}``) for placement tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Ray workers start their own sessions: a process group misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _end_with_parent() -> None:
    """In a node's ``ray start``: SIGTERM when the test process dies, so no node outlives it (Linux)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Node:
    """One ``ray start --block`` process (the leader of the node's process group)."""

    name: str
    proc: subprocess.Popen[bytes]
    resources: dict[str, float]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class RayNodes:
    """Head and worker nodes of one cluster; ``address`` is the head's ``HOST:PORT``."""

    root: Path
    env: dict[str, str]
    address: str = ""
    nodes: dict[str, Node] = field(default_factory=dict)

    @classmethod
    def start(cls, env: dict[str, str] | None = None, prefix: str = "kinmerge-ray-") -> RayNodes:
        root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        # a lost node is declared dead after 3 missed health checks of 1 s (Ray's default: 5 of 3 s)
        full = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0", "RAY_health_check_period_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}
        full.pop("RAY_ADDRESS", None)
        return cls(root=root, env=full)

    def add(self, name: str, *, num_cpus: int = 1, num_gpus: int = 0, resources: dict[str, float] | None = None,
            env: dict[str, str] | None = None, hide: Path | None = None, timeout: float = 90.0) -> Node:
        """Start a node (the first one is the head) and wait until the cluster lists it.

        ``hide``: a folder this node must not see: the node runs in a mount namespace of its own
        with an empty tmpfs mounted there (as a machine that does not mount that storage).
        """
        head = not self.nodes
        res = {f"node_{name}": 1.0, **(resources or {})}
        args = [RAY, "start", "--block", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
                f"--resources={json.dumps(res)}", "--object-store-memory=80000000", "--disable-usage-stats",
                f"--dashboard-agent-listen-port={free_port()}", "--node-ip-address=127.0.0.1"]
        if head:
            port = free_port()
            self.address = f"127.0.0.1:{port}"
            args += ["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self.root}",
                     f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}"]  # fixed by default
        else:
            args += [f"--address={self.address}"]
        if hide is not None:
            args = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount -t tmpfs kinmerge-hidden "$0" && exec "$@"', str(hide), *args]
        for attempt in (1, 2):
            log = self.root / f"node-{name}-{attempt}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(args, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_end_with_parent)
            node = self.nodes[name] = Node(name, proc, res, log)
            try:
                self._wait(node, timeout)
                return node
            except RuntimeError:
                # Ray gives a raylet 30 s to register; on a loaded 2-core machine it may need more
                self.kill(name)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _wait(self, node: Node, timeout: float) -> None:
        """Wait until ``node`` has joined (``ray start`` prints that once it is registered)."""
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in node.log.read_bytes():
            if not node.alive() or time.monotonic() > deadline:
                log = node.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ray node {node.name} did not start: {log}")
            time.sleep(0.2)

    def kill(self, name: str) -> None:
        """SIGKILL every process of node ``name`` (its raylet, agents and workers): a lost machine."""
        node = self.nodes.pop(name)
        for pid in [node.proc.pid, *descendants(node.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)  # freeze first: no process notices the others go
        for pid in [node.proc.pid, *descendants(node.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.proc.wait()

    def node_of(self, pid: int) -> str | None:
        """The name of the node a process (a task's worker) belongs to, if one of these."""
        for name, node in self.nodes.items():
            if pid in descendants(node.proc.pid):
                return name
        return None

    def stop(self) -> None:
        """End the nodes started here (workers first, the head last) and remove the temp folder."""
        for name in list(self.nodes)[::-1]:
            node = self.nodes.pop(name)
            below = descendants(node.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.proc.pid, signal.SIGTERM)  # `ray start --block` stops its node's processes
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(20)
            for pid in [node.proc.pid, *below]:  # what SIGTERM left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            node.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def can_hide_folders() -> bool:
    """Whether this process may make mount namespaces (root, or a kernel that lets users)."""
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               "mount -t tmpfs kinmerge-probe /mnt"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pids(title: str) -> list[int]:
    """Processes whose title starts with ``title`` (Ray names a busy worker ``ray::<task name>``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(title.encode()):
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


class Killer(threading.Thread):
    """SIGKILLs the first process seen with each title, in turn; records what it killed.

    With ``nodes``, only processes of those nodes count. A title written ``"ray::run_merge@c"``
    waits for such a process on node ``c`` and kills that whole node (raylet, agents, every
    worker) instead.
    """

    def __init__(self, *titles: str, delay: float = 0.0, nodes: RayNodes | None = None) -> None:
        super().__init__(daemon=True)
        self.titles, self.delay, self.nodes = list(titles), delay, nodes
        self.killed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        for target in self.titles:
            title, _, node = target.partition("@")
            while not self.stop.is_set():
                found = pids(title)
                if self.nodes is not None:  # only our nodes' workers: other Ray clusters may run here
                    found = [p for p in found if (self.nodes.node_of(p) == node if node else self.nodes.node_of(p))]
                if found:
                    time.sleep(self.delay)
                    try:
                        if node and self.nodes is not None:
                            self.nodes.kill(node)
                        else:
                            os.kill(found[0], signal.SIGKILL)
                    except ProcessLookupError:
                        continue  # finished meanwhile: wait for the next one
                    self.killed.append(target)
                    break
                time.sleep(0.05 if node else 0.01)  # /proc scans cost CPU on a 2-core machine

"""A real two-node Ray cluster on one machine: a head and a second node whose local disk is private.

    with TwoNodeCluster(tmp_path, private_paths=[repo / "data", repo / "outputs"]) as cluster:
        subprocess.run([sys.executable, "tune_ray.py", ..., "--address", cluster.address], env=cluster.env)

    two_node_cluster = two_node_cluster_fixture(private_paths=[...])     # in a test module: a pytest fixture

The head is `ray start --head --block`. The second node is `ray start --address ... --block` run inside its
own mount namespace (`unshare -m`, as root) with a fresh tmpfs over each of `private_paths`: there, and only
there, those folders are empty and what the node writes in them stays its own, as on a machine with its own
disk. Everything else of the file system is the same on both nodes, so `shared` (a plain folder) plays the
part of the NFS/EFS volume mounted at the same path on every node. Each node has its own resource label
(`head_node`, `second_node`: ask for 0.01 of it to place a task or a trial on that node) and `num_cpus` CPUs
(the head `head_cpus`, by default as many).

Everything listens on 127.0.0.1 only. Stock `ray start` cannot give that for two nodes: with Ray's
single-machine setting (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) a node takes 127.0.0.1 as its address and every
server binds to loopback, but `ray start --address` then refuses to join ("Multi-node Ray clusters are not
supported"); with clusters on (Linux's default), Ray swaps 127.0.0.1, in --node-ip-address and in the GCS
address, for the address of the network interface (`resolve_ip_for_localhost`) and its servers bind to all
interfaces. So every process of the cluster runs with the single-machine setting, and the second node's
`ray start` alone is told (two patches, JOIN_ON_LOOPBACK) to allow joining and to keep 127.0.0.1. A driver
needs the same setting to keep 127.0.0.1 in its address: `env` has it. The cluster has its own token
(RAY_AUTH_MODE=token, a 0600 file under `base`), never ~/.ray/auth_token.

Both nodes have the address 127.0.0.1: tell them apart by node id or resource label, not by IP.

Other Ray instances may run on this machine at the same time: the cluster takes free ports (none of Ray's
fixed defaults), a private temp dir, and `stop()` ends only its own processes, never `ray stop`: the
descendants of its two `ray start` processes, and any process holding a file open under its temp dir (every
Ray process of a node keeps its log files there; that also finds a worker orphaned by a killed raylet, and
a driver of the cluster still running, whose Ray logs go there too).
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"

# `ray start` for the second node: allow joining a cluster (Ray forbids it under the single-machine setting)
# and keep 127.0.0.1 as this node's address and as the head's, instead of the address of eth0.
JOIN_ON_LOOPBACK = (
    "import sys\n"
    "from ray._private import ray_constants, services\n"
    "ray_constants.ENABLE_RAY_CLUSTER = True\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv[0] = 'ray'\n"
    "main()\n"
)

# Asks the GCS for every node it knows of, alive or dead, without starting a driver (a job) on the cluster.
NODES_ALIVE = (
    "import json, sys\n"
    "from ray._private import services, state\n"
    "table = state.GlobalState()\n"
    "table._initialize_global_state(services._get_gcs_client_options(sys.argv[1]))\n"
    "print(json.dumps({node['NodeID']: node['Alive'] for node in table.node_table()}))\n"
)


def cluster_unavailable() -> str | None:
    """Why a two-node cluster cannot start here (the reason to skip), or None."""
    import importlib.util
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (util-linux)"
    if os.geteuid() != 0:
        return "a private mount namespace for the second node needs root (`unshare -m` as root)"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /tmp"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare -m` + tmpfs mount not permitted here (no CAP_SYS_ADMIN?): {probe.stderr.strip()}"
    return None


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, all different (held open together until all are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent():
    """In the child before exec: SIGTERM when the process that started the node dies (a killed pytest), so
    that `ray start --block` shuts its node down instead of outliving the test."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for task in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class TwoNodeCluster:
    """A head and a second node (own mount namespace) on 127.0.0.1; see the module docstring.

    base: a folder of the test's own (token, the nodes' `ray start` output, `shared/`).
    private_paths: folders a node keeps locally (the project's `data/`, `outputs/`; relative ones are taken
        under base): created if missing (and removed at stop() if still empty), hidden under a fresh tmpfs
        on the second node only; the head sees them as they are.
    node_death_s: about how long the GCS takes to declare a killed node dead (health checks every
        node_death_s / 3; Ray's default is 5 checks 3 s apart, 15 s).
    """

    def __init__(self, base, private_paths=(), num_cpus: int = 1, object_store_mb: int = 256,
                 node_death_s: float = 3.0, start_timeout_s: float = 90.0, head_cpus: int | None = None, log=print):
        self.base = Path(base).resolve()
        self.shared = self.base / "shared"
        self.private_paths = [(self.base / p).resolve() for p in private_paths]   # relative: under base
        self.num_cpus = num_cpus
        self.head_cpus = num_cpus if head_cpus is None else head_cpus     # room for a run that lost the second node
        self.object_store_mb = object_store_mb
        self.node_death_s = node_death_s
        self.start_timeout_s = start_timeout_s
        self.log = log
        self.address = ""
        self.env: dict[str, str] = {}   # the environment of a driver of this cluster (RAY_ADDRESS, token...): Ray
        #                                 reads it when first imported, so join from a subprocess with env=env
        self.ray_temp_dir: Path | None = None  # the nodes' Ray session dirs (logs); removed at stop()
        self.head: subprocess.Popen | None = None
        self.second: subprocess.Popen | None = None
        self._created: list[Path] = []
        self.start_s = 0.0                     # how long start() took

    # -- start ------------------------------------------------------------------------------------------
    def start(self) -> "TwoNodeCluster":
        started = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        self.shared.mkdir(exist_ok=True)
        for path in self.private_paths:
            if not path.exists():
                path.mkdir(parents=True)
                self._created.append(path)
        # A short path: Ray's Unix sockets live under it (<dir>/session_.../sockets/plasma_store, at most 107
        # bytes), too long under pytest's tmp_path.
        self.ray_temp_dir = Path(tempfile.mkdtemp(prefix="ray2n-", dir="/tmp"))
        token = self.base / "auth_token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        (gcs_port, client_port, dashboard_port, head_agent_port, second_agent_port, dashboard_metrics,
         autoscaler_metrics) = free_ports(7)
        self.address = f"{LOOPBACK}:{gcs_port}"
        ray_variables = {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                         "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"} | ray_variables
        node_env = {k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}
        common = [f"--node-ip-address={LOOPBACK}", f"--object-store-memory={self.object_store_mb * 2**20}", "--min-worker-port=0",
                  "--max-worker-port=0", "--disable-usage-stats", "--block"]
        try:
            # Fixed ports of the head (dashboard and autoscaler metrics) move to free ones; the GCS checks a
            # node every node_death_s / 3 and declares it dead after 3 failed checks.
            head_env = node_env | {"DASHBOARD_METRIC_PORT": str(dashboard_metrics),
                                   "AUTOSCALER_METRIC_PORT": str(autoscaler_metrics),
                                   "RAY_health_check_period_ms": str(int(self.node_death_s * 1000 / 3)),
                                   "RAY_health_check_failure_threshold": "3"}
            self.head = self._launch("head", [
                sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={gcs_port}",
                *common, f"--num-cpus={self.head_cpus}", f"--resources={json.dumps({'head_node': 1})}",
                "--include-dashboard=false",
                f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dashboard_port}",
                f"--dashboard-agent-listen-port={head_agent_port}", f"--ray-client-server-port={client_port}",
                f"--temp-dir={self.ray_temp_dir / 'head'}"], head_env)
            # The second node joins as soon as the GCS answers: its own start (seconds of importing Ray)
            # overlaps the rest of the head's.
            self._wait_listening(self.head, "head", gcs_port)
            mounts = "".join(f"mount -t tmpfs tmpfs {shlex.quote(str(p))} && " for p in self.private_paths)
            self.second = self._launch("second", [
                "unshare", "-m", "sh", "-c", f'mount --make-rprivate / && {mounts}exec "$0" "$@"',
                sys.executable, "-c", JOIN_ON_LOOPBACK, "start", f"--address={self.address}", *common,
                f"--num-cpus={self.num_cpus}",
                f"--resources={json.dumps({'second_node': 1})}",
                f"--dashboard-agent-listen-port={second_agent_port}",
                f"--temp-dir={self.ray_temp_dir / 'second'}"], node_env)
            self._wait_started(self.head, "head")
            self._wait_started(self.second, "second")
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started
        self.log(f"[cluster] two nodes up at {self.address} in {self.start_s:.1f} s")
        return self

    def _launch(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        out = open(self.base / f"{name}.log", "w")
        try:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=_die_with_parent)
        finally:
            out.close()

    def _wait_started(self, node: subprocess.Popen, name: str):
        """`ray start` prints "Ray runtime started." once its raylet has registered with the GCS."""
        self._wait(node, name, lambda: "Ray runtime started." in (self.base / f"{name}.log").read_text(errors="replace"))

    def _wait_listening(self, node: subprocess.Popen, name: str, port: int):
        def accepts():
            with socket.socket() as s:
                return s.connect_ex((LOOPBACK, port)) == 0
        self._wait(node, name, accepts)

    def _wait(self, node: subprocess.Popen, name: str, ready):
        deadline = time.monotonic() + self.start_timeout_s
        log = self.base / f"{name}.log"
        while not ready():
            if node.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                why = f"exited with {node.returncode}" if node.returncode is not None else \
                    f"not up after {self.start_timeout_s:.0f} s"
                raise RuntimeError(f"the {name} node's `ray start` {why}; its output ({log}):\n{tail}")
            time.sleep(0.1)

    # -- looking at it ------------------------------------------------------------------------------------
    def raylet_pid(self, node: str) -> int | None:
        """The raylet of 'head' or 'second' (a child of that node's `ray start`), None if it has none."""
        starter = {"head": self.head, "second": self.second}[node]
        if starter is None:
            return None
        return next((c for c in _children(starter.pid) if _comm(c) == "raylet"), None)

    def node_ids(self) -> dict[str, str]:
        """{'head': node id, 'second': node id}, read from each node's raylet command line."""
        out = {}
        for node in ("head", "second"):
            pid = self.raylet_pid(node)
            args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") if pid else []
            out[node] = next(a.split("=", 1)[1] for a in args if a.startswith("--node_id="))
        return out

    def nodes_alive(self) -> dict[str, bool]:
        """node id -> alive, as the GCS reports it (dead nodes stay listed)."""
        done = subprocess.run([sys.executable, "-c", NODES_ALIVE, self.address], env=self.env, capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"asking the GCS at {self.address} for its nodes failed:\n{done.stderr[-2000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def run_on_second_node(self, command: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        """A shell command in the second node's mount namespace (its private paths), with `env`."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(["nsenter", "-t", str(self.second.pid), "-m", "--", "sh", "-c", command],
                              env=kwargs.pop("env", self.env), timeout=timeout, **kwargs)

    def kill_second_node_raylet(self) -> int:
        """`kill -9` of the second node's raylet, as when its machine is lost; returns the pid. Its `ray start
        --block` then ends the node's other processes and exits."""
        pid = self.raylet_pid("second")
        if pid is None:
            raise RuntimeError("the second node has no raylet running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def processes(self) -> list[int]:
        """Pids of every process of this cluster still running (see the module docstring)."""
        if self.ray_temp_dir is None:
            return []
        found, todo = set(), [n.pid for n in (self.head, self.second) if n is not None and n.poll() is None]
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo += _children(pid)
        prefix = f"{self.ray_temp_dir}/"
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in found:
                try:
                    if any(os.readlink(f"/proc/{entry}/fd/{fd}").startswith(prefix)
                           for fd in os.listdir(f"/proc/{entry}/fd")):
                        found.add(int(entry))
                except OSError:
                    pass
        return sorted(found)

    # -- stop ---------------------------------------------------------------------------------------------
    def stop(self, grace_s: float = 5.0):
        """SIGTERM each node's `ray start --block` (it drains and ends its processes), second node first;
        then SIGKILL whatever of the cluster is left, until nothing is. A plain stop takes ~2 s; after the second
        node was lost, the head's `ray start --block` did not end within 15 s of its SIGTERM (measured), so the
        grace is short."""
        for node in (self.second, self.head):
            if node is not None and node.poll() is None:
                node.terminate()
        deadline = time.monotonic() + grace_s
        for node in (self.second, self.head):
            if node is not None:
                try:
                    node.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        deadline = time.monotonic() + grace_s
        while (left := self.processes()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for node in (self.second, self.head):
            if node is not None and node.poll() is None:
                node.kill()
                node.wait()
        if left:
            raise RuntimeError(f"cluster processes still running after stop(): {left}")
        for path in reversed(self._created):
            try:
                path.rmdir()                  # only if the test left it empty
            except OSError:
                pass
        self._created = []
        if self.ray_temp_dir is not None:
            shutil.rmtree(self.ray_temp_dir, ignore_errors=True)

    def __enter__(self) -> "TwoNodeCluster":
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def two_node_cluster_fixture(scope: str = "module", **options):
    """A pytest fixture that yields a started TwoNodeCluster (options as TwoNodeCluster's), or skips with the
    reason where one cannot start here. In a test module: `cluster = two_node_cluster_fixture(private_paths=[...])`."""
    import pytest

    @pytest.fixture(scope=scope)
    def fixture(tmp_path_factory):
        reason = cluster_unavailable()
        if reason:
            pytest.skip(reason)
        with TwoNodeCluster(tmp_path_factory.mktemp("cluster"), **options) as cluster:
            yield cluster
    return fixture

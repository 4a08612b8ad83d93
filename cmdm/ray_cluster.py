"""Starting or joining Ray: a local Ray listens on 127.0.0.1 only and its token file is private to its owner."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

RAY_TOKEN_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")   # a token setting of the user's


def ray_token_file() -> Path:
    """Where Ray 2.60 keeps the token of a local Ray (what `ray get-auth-token` prints)."""
    return Path.home() / ".ray" / "auth_token"


def check_ray_token_settings() -> None:
    """Before anything is prepared: a token file named in RAY_AUTH_TOKEN_PATH that Ray cannot read would only
    fail once Ray starts, deep in ray.init."""
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if not named or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = Path(named).expanduser()
    try:
        ok = path.is_file() and path.read_text().strip() != ""
    except OSError:
        ok = False
    if not ok:
        print(f"error: RAY_AUTH_TOKEN_PATH={named}: no token there ({'an empty file' if path.is_file() else 'no such file'}"
              "). Point it at the file holding the Ray token (one line, e.g. the output of `ray get-auth-token "
              "--generate`), or unset RAY_AUTH_TOKEN_PATH to use ~/.ray/auth_token.", file=sys.stderr)
        raise SystemExit(2)


def ensure_private_ray_token(log=print) -> Path | None:
    """Ray asks every client of a local Ray (its gRPC ports, the dashboard, the job API) for a token. On loopback
    the token is what keeps the other users of this machine out, but Ray writes ~/.ray/auth_token with the
    umask (0644 under the usual 022). So write it first, readable by its owner only. A token file already
    there is left as it is (with a warning if others may read it); so is a token the user set in RAY_AUTH_*."""
    if any(os.environ.get(v) for v in RAY_TOKEN_VARIABLES):
        return None
    path = ray_token_file()
    if not path.exists():
        import secrets
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".auth_token.")     # mode 0600
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))                                # 256 bits, as Ray's own
            os.link(tmp, path)                # whole file or none, and never over a token written meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    elif path.stat().st_mode & 0o077:
        log(f"[ray] {path}, the token of the local Ray, is readable by other users: chmod 600 {path}")
    return path


def _free_loopback_port() -> str:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def start_ray(address: str, num_cpus: int | None = None, resources: dict | None = None, log=print):
    """Join a cluster (address) or start a local Ray that listens on 127.0.0.1 only; returns the dashboard URL.

    A local Ray binds its servers (GCS, raylet, workers, dashboard and its agent with the job API, metrics) to
    the node's IP address, which on Linux Ray takes from the network interface (all interfaces for the gRPC
    servers). With clusters off (Ray's setting for macOS and Windows, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read
    when ray is first imported) the node's address is 127.0.0.1 and every one of them binds to loopback."""
    import ipaddress

    import ray
    from ray._private import ray_constants
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")   # 2 s default throttles reports
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if ray.is_initialized():
        return None
    if address:
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        ray_constants.ENABLE_RAY_CLUSTER = False    # what RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 sets at import
        ensure_private_ray_token(log=log)
        # Its workers are told RAY_ADDRESS: a worker that looks its cluster up without an address (Ray Train's
        # placement-group cleaner asks Ray's state API) otherwise finds every GCS on the machine and, beside a
        # second Ray (another sweep, a test cluster), dies of "Found multiple active Ray instances", which hangs
        # the sweep. So the GCS gets a port chosen here (RAY_GCS_SERVER_PORT, read as Ray starts its head; the
        # user's own setting wins).
        variable = ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE
        users = os.environ.get(variable)
        port = users or _free_loopback_port()
        gcs = f"127.0.0.1:{port}"
        os.environ[variable] = port
        try:
            ctx = ray.init(num_cpus=num_cpus, resources=resources, include_dashboard=True, dashboard_host="127.0.0.1",
                           log_to_driver=True, runtime_env={"env_vars": {"RAY_ADDRESS": gcs}})
        finally:                                     # this process's next local Ray picks its own port
            if users is None:
                os.environ.pop(variable, None)
        if ctx.address_info.get("gcs_address") != gcs:
            log(f"[ray] warning: the local Ray's GCS is at {ctx.address_info.get('gcs_address')}, not {gcs}: with a "
                "second Ray on this machine, Ray Train's helpers may not find this one")
        node_ip = ray.util.get_node_ip_address()
        if not ipaddress.ip_address(node_ip).is_loopback:
            log(f"[ray] warning: the local Ray took the address {node_ip}, not 127.0.0.1: its ports may be reachable "
                "from the network (this Ray version may not know ray_constants.ENABLE_RAY_CLUSTER).")
    url = getattr(ctx, "dashboard_url", None)
    return f"http://{url}" if url and not url.startswith("http") else url



def ray_is_up() -> bool:
    import ray
    return ray.is_initialized()


def alive_node_ids() -> set[str]:
    import ray
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def lost_nodes(before: set[str]) -> list[dict]:
    """The nodes of `before` (alive_node_ids() taken earlier) that Ray now reports dead: how a failed run tells a
    lost node from an error of its own, whatever error the surviving workers then raise (gloo's 'Connection
    closed by peer', an unavailable actor)."""
    import ray
    return [n for n in ray.nodes() if n["NodeID"] in before and not n.get("Alive")]


def describe_nodes(nodes: list[dict]) -> str:
    return ", ".join(f"{n.get('NodeManagerAddress', '?')} (id {n['NodeID'][:12]})" for n in nodes)

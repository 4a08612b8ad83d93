"""A real two-node Ray cluster on this machine (tests/cluster.py): a head and a second node whose local disk
(by default the repository's data/ and outputs/) is private, plus one shared folder. Needs root (unshare -m).

    python bench/two_node_cluster.py                      # start it, print how to use and stop it, wait
    python bench/two_node_cluster.py -- python tune_ray.py sweeps/demo.yaml --address {address} \
        output_root={shared}/outputs                      # run a command against it ({address} and {shared}
                                                          # in its arguments filled in), stop; exit with its code

Ask for 0.01 of the resource `head_node` or `second_node` to place a task or trial on one node.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from cluster import TwoNodeCluster, cluster_unavailable  # noqa: E402


def interrupt(signum, frame):
    """SIGTERM (`kill <pid>`) stops the cluster as Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=None,
                        help="folder for the token, the nodes' logs and shared/ (default: a new one under /tmp)")
    parser.add_argument("--private", type=Path, nargs="*", default=[REPO / "data", REPO / "outputs"],
                        help="paths private to each node (default: the repository's data/ and outputs/)")
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs of each node")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- a command to run against the cluster")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    reason = cluster_unavailable()
    if reason:
        print(f"error: cannot start a two-node cluster here: {reason}", file=sys.stderr)
        return 2
    base = args.base or Path(tempfile.mkdtemp(prefix="two-node-"))
    signal.signal(signal.SIGTERM, interrupt)
    cluster = TwoNodeCluster(base, private_paths=args.private, num_cpus=args.num_cpus)
    try:
        cluster.start()
        if command:
            command = [a.replace("{address}", cluster.address).replace("{shared}", str(cluster.shared))
                       for a in command]
            return subprocess.run(command, env=cluster.env).returncode
        variables = " ".join(f"{k}={v}" for k, v in cluster.env.items()
                             if k.startswith("RAY_") and os.environ.get(k) != v)
        ids = cluster.node_ids()
        print(f"address:     {cluster.address}\n"
              f"node ids:    head {ids['head']} (resource head_node), second {ids['second']} (second_node)\n"
              f"shared:      {cluster.shared}\n"
              f"private:     {', '.join(map(str, cluster.private_paths))} (tmpfs on the second node)\n"
              f"ray logs:    {cluster.ray_temp_dir}/{{head,second}}/session_latest/logs\n"
              f"a driver:    export {variables}\n"
              f"second node: nsenter -t {cluster.second.pid} -m sh   (a shell that sees its private disk)\n"
              f"stop:        Ctrl-C, or kill {os.getpid()}", flush=True)
        while cluster.head.poll() is None:
            time.sleep(1)
        print("the head node's `ray start` exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        cluster.stop()
        print("cluster stopped", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

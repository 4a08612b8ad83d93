"""Before any trial or worker starts on a Ray cluster: every node sees what the driver prepared.

On one machine the driver's files are the workers' files. On a cluster each node has its own disk, and a path
that is not on shared storage (NFS, EFS) means something else on every node: a worker there would find no data,
an evaluator fitted on other data, or an `output_root` whose checkpoints the driver never sees. So the driver
runs one tiny Ray task on every alive node (no CPU asked, pinned to the node) that reports what the node sees:

- `output_root`: a marker the driver has just written there is readable, and the node can write beside it
  (the same storage, writable);
- data.root, the evaluator files and the caption-feature cache: each one's fingerprint on that node, compared
  with the driver's (the same files, not just the same path).

Anything else is one paragraph naming the path, the node and the fix (`PreflightError`, exit 2), before any
training. A single-node Ray has nothing to check and runs no task.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cmdm.config import Config
from cmdm.run_files import file_sha256

MARKER_DIR = ".cmdm-preflight"      # under output_root; the driver's marker files, removed when checked
TASK_TIMEOUT_S = 120.0              # a node that cannot run a zero-CPU task in this time is reported


class PreflightError(Exception):
    """A node of the cluster does not see the storage or the files a run needs. One paragraph, with the fix."""


def tree_fingerprint(root: str | Path) -> str | None:
    """sha256 of a folder's file names and sizes, with the contents of its small top-level files (split lists,
    Mean/Std, meta): the same dataset on two disks gives the same value, in well under a second for HumanML3D's
    ~30k files. None when the folder is missing."""
    root = Path(root)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel.startswith(".") or "/." in rel:      # locks, temp files of a writer
                continue
            size = path.stat().st_size
            h.update(f"{rel}:{size}\n".encode())
            if Path(dirpath) == root and size <= 1 << 20:
                h.update(path.read_bytes())
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str | None:
    """sha256 of a file's contents; None when it is missing."""
    return file_sha256(path) if Path(path).is_file() else None


def needed_files(cfg: Config) -> dict[str, tuple[str, str]]:
    """{config key: (kind, absolute path)} of what every worker reads; kind is 'tree' or 'file'."""
    # Imported here, in the driver: each node's preflight task imports this module, and torch (which these
    # modules import) would add seconds to every node's answer.
    from cmdm.evaluation.evaluator import CHECKPOINT_CANDIDATES, EVALUATOR_FILE
    from cmdm.model.text import text_cache_path
    ev = cfg.evaluation
    needed = {"data.root": ("tree", cfg.data.root)}
    if cfg.data.name == "humanml3d":
        found = [Path(ev.evaluator_dir) / c for c in CHECKPOINT_CANDIDATES if (Path(ev.evaluator_dir) / c).is_file()]
        needed["evaluation.evaluator_dir"] = ("file", str(found[0] if found else Path(ev.evaluator_dir) / CHECKPOINT_CANDIDATES[0]))
        needed["evaluation.glove_dir"] = ("tree", ev.glove_dir)
    else:
        needed["evaluation.evaluator_dir"] = ("file", str(Path(ev.evaluator_dir) / EVALUATOR_FILE))
    cache = text_cache_path(cfg)
    if cache.is_file():        # without a cache each worker encodes the captions itself: nothing to compare
        needed["caption features (text_features/ in data.root)"] = ("file", str(cache))
    return needed


def fingerprints(needed: dict[str, tuple[str, str]]) -> dict[str, str | None]:
    """{config key: fingerprint of its path here} for needed_files' entries: what the driver and each node compare."""
    return {key: (tree_fingerprint(path) if kind == "tree" else file_fingerprint(path))
            for key, (kind, path) in needed.items()}


def what_this_node_sees(marker: str, token: str, needed: dict[str, tuple[str, str]]) -> dict:
    """Run on each node: the marker's content, whether a file can be written beside it, and each fingerprint."""
    seen = {"host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}
    try:
        seen["marker"] = Path(marker).read_text() == token
    except OSError:
        seen["marker"] = False
    probe = Path(marker).parent / f"{Path(marker).name}.{seen['node_id'][:12]}"
    try:
        probe.write_text(token)
        probe.unlink()
        seen["writable"] = None
    except OSError as err:
        seen["writable"] = f"{type(err).__name__}: {err}"
    seen["files"] = fingerprints(needed)
    return seen


_node_task = ray.remote(num_cpus=0, max_retries=0)(what_this_node_sees)


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def check_cluster(cfg: Config, output_root: str | Path, log=print) -> None:
    """Raise PreflightError unless every alive node sees `output_root` as the driver's writable storage and the
    data, evaluator and caption features with the driver's fingerprints. Nothing to do on a one-node Ray."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    output_root = Path(output_root).resolve()
    needed = needed_files(cfg)
    mine = fingerprints(needed)
    token = secrets.token_hex(16)
    marker_dir = output_root / MARKER_DIR
    marker_dir.mkdir(parents=True, exist_ok=True)
    marker = marker_dir / token
    marker.write_text(token)
    try:
        refs = {n["NodeID"]: _node_task.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
                ).remote(str(marker), token, needed) for n in nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=TASK_TIMEOUT_S)
        problems = []
        for node in nodes:
            ref = refs[node["NodeID"]]
            where = f"node {node.get('NodeManagerAddress', '?')} (id {node['NodeID'][:12]})"
            if ref not in ready:
                problems.append(f"{where} did not answer the preflight task within {TASK_TIMEOUT_S:.0f} s; check it "
                                "with `ray status` (is it overloaded or lost?)")
                continue
            try:
                seen = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - the node's own error, reported with the node
                problems.append(f"{where} could not run the preflight task ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})")
                continue
            problems += node_problems(where, seen, mine, needed, output_root)
    finally:
        marker.unlink(missing_ok=True)
    if problems:
        raise PreflightError(
            f"The Ray cluster's {len(nodes)} nodes do not all see what this run needs: " + "; ".join(problems) +
            ". Every node must see the same files at the same paths: put output_root, data.root and "
            "evaluation.evaluator_dir (and evaluation.glove_dir for HumanML3D) on storage every node mounts at the "
            "same path (NFS, EFS; see docker/README.md), e.g. output_root=/mnt/shared/outputs "
            "data.root=/mnt/shared/data/synthetic evaluation.evaluator_dir=/mnt/shared/data/synthetic_evaluator, "
            "then run the command again on the head: it prepares them there once.")
    log(f"[preflight] {len(nodes)} nodes see the same {output_root} and the same data, evaluator and caption "
        "features")


def node_problems(where: str, seen: dict, mine: dict, needed: dict, output_root: Path) -> list[str]:
    """What one node's view differs in from the driver's, each as a clause naming the path and the key."""
    problems = []
    if not seen["marker"]:
        problems.append(f"{where} does not see the file the driver just wrote in output_root {output_root} (it is not "
                        "the same storage there)")
    elif seen["writable"]:
        problems.append(f"{where} cannot write in output_root {output_root} ({seen['writable']})")
    for key, theirs in seen["files"].items():
        path = needed[key][1]
        if theirs is None and mine[key] is not None:
            problems.append(f"{where} has no {path} ({key})")
        elif theirs != mine[key]:
            problems.append(f"{where} has other files at {path} ({key}) than the driver")
    return problems

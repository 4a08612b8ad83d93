"""Can the Ray workers of a run (or of one sweep trial) ever be placed? Checked before any worker or trial starts.

Ray queues a request it cannot grant and waits for it forever; a run asking for more CPUs or GPUs than the
machine (a local Ray: os.sched_getaffinity / torch.cuda) or the cluster (`ray.cluster_resources()` once joined)
has is refused instead, with what it asks and what there is.
"""
from __future__ import annotations

import os


class ResourceError(Exception):
    """A resource request the machine or cluster can never grant; one paragraph with the keys and the fix."""


def local_offer() -> dict:
    """CPUs and GPUs a local Ray started here would have."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:          # not on Linux
        cpus = os.cpu_count() or 1
    import torch
    return {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())}


def cluster_offer() -> dict:
    """CPUs and GPUs of the Ray cluster this process is connected to."""
    import ray
    total = ray.cluster_resources()
    return {"CPU": float(total.get("CPU", 0)), "GPU": float(total.get("GPU", 0))}


def check_fits(ray_cfg, offer: dict, *, where: str, prefix: str, what: str, extra_cpu: float = 0.0) -> None:
    """Refuse when `ray_cfg` (num_workers, cpus_per_worker, use_gpu, gpus_per_worker) exceeds `offer`.
    `prefix` names the keys (`ray.` in a config, `resources.` in a sweep file), `what` the machine or cluster."""
    n, cpus = ray_cfg.num_workers, ray_cfg.cpus_per_worker
    gpus = (ray_cfg.gpus_per_worker or 1) if ray_cfg.use_gpu else 0
    need_cpu, need_gpu = n * cpus + extra_cpu, n * gpus
    if need_cpu <= offer["CPU"] + 1e-9 and need_gpu <= offer["GPU"] + 1e-9:
        return
    asks = f"{n} worker(s) x {cpus:g} CPU" + (f" and {gpus:g} GPU" if gpus else "") + \
        f" = {need_cpu:g} CPUs" + (f" and {need_gpu:g} GPUs" if gpus else "")
    if need_gpu > offer["GPU"] + 1e-9:
        fix = (f"lower {prefix}num_workers / {prefix}gpus_per_worker to fit {offer['GPU']:g} GPUs, or set "
               f"{prefix}use_gpu=false to train on the CPUs")
    else:
        fix = (f"lower {prefix}num_workers and {prefix}cpus_per_worker so that num_workers x cpus_per_worker "
               f"<= {max(offer['CPU'] - extra_cpu, 0):g} (e.g. {prefix}num_workers=1 {prefix}cpus_per_worker=1)")
    raise ResourceError(f"{where}: {prefix}num_workers / {prefix}cpus_per_worker / {prefix}use_gpu ask for {asks} "
                        f"per {'trial' if prefix == 'resources.' else 'run'}, but {what} has {offer['CPU']:g} CPUs "
                        f"and {offer['GPU']:g} GPUs, so Ray would wait forever to start it. Fix: {fix}; or join a "
                        "bigger cluster with --address.")

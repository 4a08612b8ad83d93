"""train_ray.py on a real two-node Ray cluster (tests/cluster.py): a head and a second node whose `local/` is its
own disk. The preflight refuses, before any training, data or an output_root that one node does not see as the
driver does; with everything on storage both nodes see, the run is DDP with one worker per node (gloo), its
files are all readable on the head, and the two workers end with identical parameters."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cluster import two_node_cluster_fixture
from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]

two_nodes = two_node_cluster_fixture(private_paths=["local"], num_cpus=2)   # two runs of 2 workers fit at once


def _train(cluster, values: dict, name: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "train_ray.py", "configs/demo.yaml", "--address", cluster.address, "--name", name]
    args += [f"{k}={v}" for k, v in values.items()]
    return subprocess.run(args, cwd=REPO, env=cluster.env, capture_output=True, text=True, timeout=900)


def _one_paragraph_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return " ".join(done.stderr.split())


def test_data_and_an_output_root_only_the_head_has_are_refused_before_any_training(two_nodes, tiny):
    """Both on the head's own disk (the second node's local/ is empty): one paragraph names each problem, and
    nothing trains. (One run for both: each costs a train_ray.py start on the cluster.)"""
    local = two_nodes.private_paths[0]
    shutil.copytree(tiny / "data", local / "data")       # on the head's disk; the second node's local/ is empty
    values = tiny_config(tiny, **{"data.root": local / "data", "output_root": local / "outputs",
                                  "ray.num_workers": 2})
    err = _one_paragraph_error(_train(two_nodes, values, "private"))
    second = two_nodes.node_ids()["second"]
    assert f"(id {second[:12]}) has no {local / 'data'} (data.root)" in err, err
    assert f"(id {second[:12]}) does not see the file the driver just wrote in output_root" in err, err
    assert "do not all see what this run needs" in err and "storage every node mounts at the same path" in err
    assert not (local / "outputs" / "private" / "logs" / "runtime.log").exists()   # nothing trained


def _epoch_losses(run: Path) -> list[float]:
    return [float(x) for x in re.findall(r"Avg Loss: (\S+)", (run / "logs" / "runtime.log").read_text())]


def test_ddp_with_one_worker_per_node_on_shared_storage(two_nodes, tiny):
    """One gloo worker per node (STRICT_SPREAD), identical parameters at the end, and the loss of a
    single-worker run with the same global batch (16 = 2 x 8: the same clips in each step) within noise: 12%
    per epoch, where two single-worker runs that differ only in their seed differed by up to 7.5% (measured)."""
    out = two_nodes.shared / "outputs"
    values = tiny_config(tiny, **{"output_root": out, "ray.num_workers": 2, "task.train.batch_size": 8,
                                  "ray.placement_strategy": "STRICT_SPREAD"})
    done = _train(two_nodes, values, "ddp")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = out / "ddp"
    log = (run / "logs" / "runtime.log").read_text()
    assert "[preflight] 2 nodes see the same" in done.stdout + done.stderr
    assert "2 worker(s) on cpu" in log
    assert re.search(r"DDP: the 2 workers hold identical parameters \(sha256 [0-9a-f]{16}\)", log), log[-2000:]
    assert len(re.findall(r"\[EVAL\] FID", log)) == 2
    assert list((run / "logs").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "model_best.pt").is_file() and (run / "checkpoints" / "best_metrics.json").is_file()
    single = _train(two_nodes, tiny_config(tiny, **{"output_root": out, "ray.num_workers": 1,
                                                    "task.train.batch_size": 16}), "single")
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_losses, single_losses = _epoch_losses(run), _epoch_losses(out / "single")
    assert len(ddp_losses) == len(single_losses) == 2
    assert all(abs(a - b) <= 0.12 * b for a, b in zip(ddp_losses, single_losses)), (ddp_losses, single_losses)


def _start_run(cluster, values: dict, name: str) -> subprocess.Popen:
    args = [sys.executable, "train_ray.py", "configs/demo.yaml", "--address", cluster.address, "--name", name]
    args += [f"{k}={v}" for k, v in values.items()]
    return subprocess.Popen(args, cwd=REPO, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_lost_node_is_rerun_on_the_nodes_left_or_stops_with_one_paragraph(two_nodes, tiny):
    """Last in this file: it takes the second node down while two DDP runs (a worker on each node) train. The
    one with the default ray.lost_node_retries is rerun from its last.pt on the head and finishes; the one with
    ray.lost_node_retries=0 stops: the command says which node was lost, what is kept and how to go on (exit
    1), no traceback of ours."""
    import time
    out = two_nodes.shared / "outputs"
    common = {"output_root": out, "ray.num_workers": 2, "task.train.batch_size": 8, "training.max_epochs": 5,
              "ray.placement_strategy": "SPREAD"}
    rerun = _start_run(two_nodes, tiny_config(tiny, **common), "survives")
    proc = _start_run(two_nodes, tiny_config(tiny, **common, **{"ray.lost_node_retries": 0}), "lost")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and rerun.poll() is None:
        if all((out / name / "checkpoints" / "last.pt").is_file() for name in ("lost", "survives")):
            break         # epoch 1 of both trained, evaluated and saved
        time.sleep(0.5)
    time.sleep(1.0)
    second = two_nodes.node_ids()["second"]
    two_nodes.kill_second_node_raylet()
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stdout[-2000:] + stderr[-3000:]
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]   # Ray's worker logs come around it
    assert len(ours) == 1, stderr[-3000:]
    last = ours[0]
    assert last.startswith("error: training stopped: Ray node "), last
    assert f"(id {second[:12]}) was lost during the run (ray.lost_node_retries = 0: no rerun)" in last, last
    assert f"its last checkpoint {out / 'lost' / 'checkpoints' / 'last.pt'} (step " in last, last
    assert "ray.lost_node_retries=3" in last, last
    assert (out / "lost" / "checkpoints" / "last.pt").is_file()

    r_out, r_err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, r_out[-2000:] + r_err[-3000:]
    assert f"(id {second[:12]}) was lost at step " in r_out and "rerunning from" in r_out, r_out[-2000:]
    assert "(rerun 1x after a lost Ray node)" in r_out
    log = (out / "survives" / "logs" / "runtime.log").read_text()
    assert "Resumed from" in log and len(re.findall(r"Epoch\s+\d+ completed", log)) >= 5
    assert "lost node" in (out / "survives" / "node_lost.log").read_text()
    status = json.loads((out / "survives" / "status.json").read_text())
    assert status["stop_reason"] == "finished" and status["epoch"] == 5

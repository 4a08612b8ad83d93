"""tune_ray.py on a real two-node Ray cluster (tests/cluster.py), everything on the shared folder: trials run on
both nodes, the second node is killed (`kill -9` of its raylet) while a trial trains there, Tune's FailureConfig
(ray.lost_node_retries) runs that trial again on the head from its last.pt, the sweep finishes with every finished
trial's results kept, and the summary, report and export work on the head."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from cluster import two_node_cluster_fixture
from test_tune_ray import sweep_file

REPO = Path(__file__).resolve().parents[1]

# head: 2 CPUs (two trial drivers of 0.01 CPU and one Train worker), second node: 1 CPU (one Train worker), so the
# first two trials train at once, one on each node
two_nodes = two_node_cluster_fixture(private_paths=["local"], num_cpus=1, head_cpus=2)


def _rank0_node(run: Path) -> str | None:
    """The Ray node (id, 12 hex digits) rank 0 of the trial's latest start ran on, as its runtime.log says."""
    log = run / "logs" / "runtime.log"
    nodes = re.findall(r"rank 0 on Ray node ([0-9a-f]{12})", log.read_text()) if log.is_file() else []
    return nodes[-1] if nodes else None


def test_a_sweep_on_two_nodes_survives_losing_one(two_nodes, tiny):
    out = two_nodes.shared / "outputs"
    # 3 epochs, ASHA's first rung at the 4th evaluation and no doctor: no trial is stopped, each ends by itself
    path = sweep_file(tiny, two_nodes.base, "cluster-sweep", base_extra={"training.max_epochs": 3}, num_samples=3,
                      max_concurrent_trials=2, output_root=str(out), doctor={"remedy": "off"},
                      scheduler={"time_attr": "evaluations", "grace_period": 4, "reduction_factor": 2, "max_t": 5})
    d = out / "cluster-sweep"
    ids = two_nodes.node_ids()
    head, second = ids["head"][:12], ids["second"][:12]
    log = two_nodes.base / "sweep.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "tune_ray.py", str(path), "--address", two_nodes.address], cwd=REPO,
                                env=two_nodes.env, stdout=fh, stderr=subprocess.STDOUT, text=True)
    try:
        victim, deadline = None, time.time() + 600
        while victim is None and time.time() < deadline and proc.poll() is None:
            for run in d.glob("trials/*"):   # a trial training on the second node with its epoch-1 last.pt
                if _rank0_node(run) == second and (run / "checkpoints" / "last.pt").is_file() \
                        and not (run / "status.json").exists():
                    victim = run
            time.sleep(0.3)
        assert victim is not None, log.read_text()[-3000:]
        finished_before = {p.parent.name: (p.parent / "checkpoints" / "best_metrics.json").stat().st_mtime
                           for p in d.glob("trials/*/status.json")}
        two_nodes.kill_second_node_raylet()
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert f"[trial {victim.name}] Ray node" in text and "was lost while this trial trained" in text, text[-4000:]

    summary = json.loads((d / "summary.json").read_text())
    rows = {r["trial_id"]: r for r in summary["trials"]}
    assert len(rows) == 3 and all(r["end"] == "finished" for r in rows.values()), rows
    assert rows[victim.name]["lost_nodes"] and "lost node" in (victim / "node_lost.log").read_text()
    assert f"{rows[victim.name]['end']} (retried 1x: node lost)" in (d / "summary.md").read_text()
    victim_log = (victim / "logs" / "runtime.log").read_text()
    assert "Resumed from" in victim_log and _rank0_node(victim) == head    # the rerun: on the head, from last.pt
    assert {_rank0_node(run) for run in d.glob("trials/*")} == {head}      # every last start on the head ...
    assert f"rank 0 on Ray node {second}" in victim_log                    # ... the victim's first on the second
    for trial_id, mtime in finished_before.items():                        # a finished trial's results are kept
        assert (d / "trials" / trial_id / "checkpoints" / "best_metrics.json").stat().st_mtime == mtime
    for run in d.glob("trials/*"):           # everything each trial wrote is on the head
        assert list((run / "logs").glob("events.out.tfevents.*")), run
        best = json.loads((run / "checkpoints" / "best_metrics.json").read_text())
        assert (run / "checkpoints" / "model_best.pt").is_file() and isinstance(best["fid"], float)
    assert (d / "report" / "index.html").stat().st_size > 1000

    export = subprocess.run([sys.executable, "tune_ray.py", "export", str(d), "--out", str(two_nodes.base / "best")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    assert json.loads((two_nodes.base / "best" / "best_metrics.json").read_text())["fid"] == \
        summary["trials"][0]["best"]["fid"]

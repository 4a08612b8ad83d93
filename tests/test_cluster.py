"""The two-node cluster harness (tests/cluster.py) does what the cluster tests rely on: tasks placed by node
label land on that node, the shared folder is one disk and the private paths are two, everything listens on
loopback, a killed node is reported dead, and stop() leaves no process behind.

The tests share one cluster (module scope) and run in this order; the last two take the nodes down."""
import json
import subprocess
import sys
import time
from pathlib import Path

from cluster import two_node_cluster_fixture

two_nodes = two_node_cluster_fixture(private_paths=["local/data", "local/outputs"])

# A driver of the cluster: one task on each node (by its resource label) says where it ran and which files it sees.
WHERE_AND_WHAT = """
import json, os, sys
import ray
ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)

@ray.remote(num_cpus=0)
def look(paths):
    return ray.get_runtime_context().get_node_id(), {p: os.path.exists(p) for p in paths}

paths = json.loads(sys.argv[1])
head = look.options(resources={"head_node": 0.01}).remote(paths)
second = look.options(resources={"second_node": 0.01}).remote(paths)
print(json.dumps(dict(zip(("head", "second"), ray.get([head, second])))))
"""


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def test_tasks_by_node_label_see_the_shared_folder_and_only_their_own_private_disk(two_nodes):
    data = two_nodes.private_paths[0]
    (two_nodes.shared / "from_head.txt").write_text("head")
    (data / "from_head.txt").write_text("head")
    wrote = two_nodes.run_on_second_node(f"echo second > {data}/from_second.txt && ls {data}")
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.split() == ["from_second.txt"]          # the head's file is hidden there
    assert not (data / "from_second.txt").exists()               # and the second node's is not on the head

    files = [str(two_nodes.shared / "from_head.txt"), str(data / "from_head.txt"), str(data / "from_second.txt")]
    done = subprocess.run([sys.executable, "-c", WHERE_AND_WHAT, json.dumps(files)], env=two_nodes.env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    ids = two_nodes.node_ids()
    assert ids["head"] != ids["second"]
    assert seen["head"] == [ids["head"], {files[0]: True, files[1]: True, files[2]: False}]
    assert seen["second"] == [ids["second"], {files[0]: True, files[1]: False, files[2]: True}]
    (data / "from_head.txt").unlink()                            # stop() removes the private paths it made


def test_every_server_of_the_cluster_listens_on_loopback_only(two_nodes):
    from listening import listening_sockets, not_loopback
    sockets = listening_sockets(two_nodes.processes())
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets
    assert not_loopback(sockets) == []
    assert two_nodes.address.startswith("127.0.0.1:")


def test_a_killed_second_node_is_reported_dead(two_nodes):
    ids = two_nodes.node_ids()
    assert two_nodes.nodes_alive() == {ids["head"]: True, ids["second"]: True}
    killed = time.monotonic()
    two_nodes.kill_second_node_raylet()
    alive = None
    while time.monotonic() - killed < 30:
        alive = two_nodes.nodes_alive()
        if not alive[ids["second"]]:
            break
        time.sleep(0.5)
    took = time.monotonic() - killed
    print(f"second node reported dead {took:.1f} s after kill -9 of its raylet")
    assert alive == {ids["head"]: True, ids["second"]: False}, f"after {took:.0f} s"
    two_nodes.second.wait(timeout=30)                              # its `ray start --block` saw it and ended


def test_stop_leaves_no_process_behind(two_nodes):
    before = {pid: _start_time(pid) for pid in two_nodes.processes()}
    assert before
    stopping = time.monotonic()
    two_nodes.stop()
    stop_s = time.monotonic() - stopping
    print(f"cluster start {two_nodes.start_s:.1f} s + stop {stop_s:.1f} s = {two_nodes.start_s + stop_s:.1f} s")
    assert two_nodes.processes() == []
    assert [pid for pid, started in before.items() if _start_time(pid) == started] == []
    assert two_nodes.head.poll() is not None and two_nodes.second.poll() is not None
    assert not two_nodes.ray_temp_dir.exists()
    assert not any(p.exists() for p in two_nodes.private_paths)   # created for the test, empty on the head

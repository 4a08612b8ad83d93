"""A local Ray with a second Ray on the same machine (another sweep, a test cluster): its workers must still find
their own cluster. Ray Train's placement-group cleaner looks its cluster up through Ray's state API without an
address; before start_ray told the workers RAY_ADDRESS, it found two GCS processes, died of "Found multiple active
Ray instances" and the sweep hung."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OTHER_RAY = "import ray, sys, time; ray.init(num_cpus=0, include_dashboard=False); print('up', flush=True); time.sleep(300)"

OUR_RAY = textwrap.dedent("""
    import json, os, ray
    from cmdm.ray_cluster import start_ray
    start_ray("", num_cpus=1, log=lambda *a: None)

    @ray.remote(num_cpus=0)
    def look_up():
        from ray._private.services import canonicalize_bootstrap_address_or_die, find_gcs_addresses
        from ray.util.state import list_nodes
        return {"gcs_processes": len(find_gcs_addresses()), "found": canonicalize_bootstrap_address_or_die(None),
                "own": ray.get_runtime_context().gcs_address, "state_api_nodes": len(list_nodes())}

    print(json.dumps({**ray.get(look_up.remote()), "driver_port_variable": os.environ.get("RAY_GCS_SERVER_PORT")}))
""")


def test_a_local_rays_workers_find_it_beside_a_second_ray_on_the_machine(tmp_path):
    import json
    other = subprocess.Popen([sys.executable, "-c", OTHER_RAY], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert other.stdout.readline().strip() == "up"
        proc = subprocess.run([sys.executable, "-c", OUR_RAY], capture_output=True, text=True, cwd=ROOT, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        other.terminate()                                  # the driver's SIGTERM handler shuts its Ray down
        try:
            other.wait(timeout=60)
        except subprocess.TimeoutExpired:
            other.kill()
    assert seen["gcs_processes"] >= 2                      # the situation: two Rays' GCS on this machine
    assert seen["found"] == seen["own"] and seen["own"].startswith("127.0.0.1:")
    assert seen["state_api_nodes"] == 1                    # the state API reached our one-node cluster
    assert seen["driver_port_variable"] is None            # the chosen port does not stick to the driver

"""The scale-out files cannot be built here (no docker, no cloud), so check what can go wrong on paper:
cluster.yaml's shape, the dashboard kept on loopback, and the image's Ray and torch matching pyproject.toml."""
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((DOCKER / "cluster.yaml").read_text())


def dockerfile() -> str:
    """The Dockerfile with its `ARG NAME=default` values substituted for ${NAME}."""
    text = (DOCKER / "Dockerfile").read_text()
    for name, value in re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M):
        text = text.replace("${%s}" % name, value)
    return text


def requirement(name: str) -> Requirement:
    try:
        import tomllib
    except ModuleNotFoundError:   # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def test_cluster_yaml_has_the_launcher_keys(cluster):
    assert cluster["cluster_name"] == "cmdm-tune"
    assert cluster["provider"]["type"]
    assert cluster["docker"]["image"]
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    for name, spec in types.items():
        assert {"resources", "node_config"} <= set(spec), name
    workers = [spec for name, spec in types.items() if name != cluster["head_node_type"]]
    gpu = [s for s in workers
           if s["resources"].get("GPU", 0) >= 1 or re.match(r"(g\d|p\d)", s["node_config"].get("InstanceType", ""))]
    assert gpu, "no GPU worker type"
    assert all(s.get("min_workers", 0) <= s.get("max_workers", cluster.get("max_workers", 0)) for s in gpu)


def test_dashboard_stays_on_loopback(cluster):
    commands = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cluster[key]]
    assert any("ray start --head" in c for c in commands)
    for c in commands:
        if "ray start --head" in c:
            assert "--dashboard-host=127.0.0.1" in c, c
        for host in re.findall(r"--dashboard-host[= ](\S+)", c):
            assert host == "127.0.0.1", c


def test_image_ray_matches_pyproject():
    ray_req = requirement("ray")
    versions = re.findall(r"^FROM\s+rayproject/ray:(\d+\.\d+\.\d+)", dockerfile(), re.M)
    assert versions, "the Dockerfile should start FROM rayproject/ray:X.Y.Z-..."
    assert versions[0] in ray_req.specifier, (versions[0], str(ray_req))
    minor = ".".join(versions[0].split(".")[:2])
    assert f"startswith('{minor}.')" in dockerfile(), "the build should check the installed Ray's minor version"


def test_image_installs_cuda_torch_within_pyproject_range():
    text = dockerfile()
    line = next((l for l in text.splitlines() if "pip install" in l and "torch==" in l), None)
    assert line, "no `pip install torch==...` line"
    assert re.search(r"--(extra-)?index-url\s+https://download\.pytorch\.org/whl/cu\d+", line), line
    version = re.search(r"torch==([\w.+]+)", line).group(1)
    assert version in requirement("torch").specifier, version
    assert re.search(r"^ENV\s+HF_HUB_OFFLINE=1", text, re.M)
    assert re.search(r"^WORKDIR\s+/app", text, re.M)


def test_readme_shows_the_cluster_commands():
    text = (DOCKER / "README.md").read_text()
    for phrase in ("ray up", "ray job submit", "--address", "ray down", "ray rsync-down", "tune_ray.py export"):
        assert phrase in text, phrase

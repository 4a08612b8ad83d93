"""Bad-input rows for dataset files and the synthetic generator: each stops before Ray (or any training)
with exit 2 and one `error:` naming the file and the fix, and leaves every file as it was.

Dataset rows run `train_ray.py configs/demo.yaml data.name=humanml3d data.root={tmp}/H` on a 20-clip set
with one file broken: the driver's `check_dataset` reads every file once before Ray starts.
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from badinput import Case, check

DEMO = "{root}/configs/demo.yaml"
_CACHE = {}


def synthetic_set() -> Path:
    """A 20-clip synthetic set (manifest included), generated once for the whole file."""
    if "root" not in _CACHE:
        from cmdm.data.synthetic import generate_dataset
        base = Path(tempfile.mkdtemp(prefix="badinput-data-"))
        _CACHE["root"] = generate_dataset(base / "set", 20, seed=0, num_points=32, workers=1, progress=False,
                                          log=lambda *_: None)
    return _CACHE["root"]


def ids(split):
    return (synthetic_set() / f"{split}.txt").read_text().split()


def dataset(change=None, ours=False):
    """setup: copy the set to {tmp}/H (without its manifest unless ours), then change(H)."""
    def setup(tmp):
        shutil.copytree(synthetic_set(), tmp / "H")
        if not ours:
            (tmp / "H" / "synthetic_manifest.json").unlink()
        if change is not None:
            change(tmp / "H")
    return setup


def save(rel, array):
    return lambda h: np.save(h / rel, array)


def write(rel, data):
    return lambda h: (h / rel).write_bytes(data) if isinstance(data, bytes) else (h / rel).write_text(data)


def motion(split, value=None, shape=None):
    def change(h):
        path = h / "new_joint_vecs" / f"{ids(split)[0]}.npy"
        m = np.load(path)
        if value is not None:
            m[len(m) // 2, 7] = value
        np.save(path, np.zeros(shape, np.float32) if shape is not None else m)
    return change


def contacts(split="train", points=None, dist=None, **extra):
    def change(h):
        path = h / "contacts" / f"{ids(split)[0]}.npz"
        with np.load(path) as z:
            arrays = {"points": z["points"], "dist": z["dist"]}
        if points is not None:
            arrays["points"] = points(arrays["points"])
        if dist is not None:
            arrays["dist"] = dist(arrays["dist"])
        arrays.update(extra)
        if "drop" in arrays:
            arrays.pop(arrays.pop("drop"))
        np.savez(path, **arrays)
    return change


def with_value(value, at=(0, 0)):
    def f(a):
        a = a.copy()
        a[at] = value
        return a
    return f


def truncate(rel, keep=100):
    return lambda h: (h / rel).write_bytes((h / rel).read_bytes()[:keep])


def train(*extra):
    return ["train_ray.py", DEMO, "data.name=humanml3d", "data.root={tmp}/H", *extra]


def files(spec):
    """setup: write {relative path: text} under tmp (a path ending in / is a folder)."""
    def setup(tmp):
        for rel, text in spec.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir() if rel.endswith("/") else path.write_text(text)
    return setup


def row(id, change, names, fix, argv=None, ours=False, **kw):
    return Case(id, argv or train(), setup=dataset(change, ours), names=names, fix=fix,
                may_change=["outputs"], **kw)


M = "{tmp}/H/Mean.npy"
S = "{tmp}/H/Std.npy"
CASES = [
    row("mean-nan", save("Mean.npy", np.full(263, np.nan, np.float32)), [M], ["recompute"]),
    row("mean-inf", save("Mean.npy", np.r_[np.inf, np.zeros(262)].astype(np.float32)), [M], ["recompute"]),
    row("std-nan", save("Std.npy", np.r_[np.nan, np.ones(262)].astype(np.float32)), [S], ["recompute"]),
    row("std-inf", save("Std.npy", np.r_[np.ones(262), -np.inf].astype(np.float32)), [S], ["recompute"]),
    row("std-zero", save("Std.npy", np.zeros(263, np.float32)), [S], ["recompute"]),
    row("mean-truncated", truncate("Mean.npy"), [M], ["recompute"]),
    row("mean-empty-file", write("Mean.npy", b""), [M], ["recompute"]),
    row("mean-is-text", write("Mean.npy", "0.0 0.1 0.2\n"), [M], ["recompute"]),
    row("mean-is-npz", lambda h: np.savez(h / "Mean.npy.npz", a=np.zeros(263)) or
        (h / "Mean.npy.npz").rename(h / "Mean.npy"), [M], [".npz"]),
    row("mean-wrong-shape", save("Mean.npy", np.zeros((263, 2), np.float32)), [M], ["(263,)"]),
    row("mean-object-array", lambda h: np.save(h / "Mean.npy", np.array([None] * 263), allow_pickle=True),
        [M], ["recompute"]),
    row("motion-nan-train", motion("train", np.nan), ["{train:new_joint_vecs}"], ["re-extract"]),
    row("motion-inf-test", motion("test", -np.inf), ["{test:new_joint_vecs}"], ["re-extract"]),
    row("motion-nan-val", motion("val", np.nan), ["{val:new_joint_vecs}"], ["re-extract"]),
    row("motion-wrong-shape", motion("train", shape=(60, 251)), ["{train:new_joint_vecs}"], ["(T, 263)"]),
    row("motion-truncated", lambda h: truncate(f"new_joint_vecs/{ids('train')[0]}.npy", 300)(h),
        ["{train:new_joint_vecs}"], ["re-extract"]),
    row("caption-not-utf8",
        lambda h: write(f"texts/{ids('train')[0]}.txt", "a man walks#a/DET\xff\n".encode("latin-1"))(h),
        ["{train:texts}"], ["UTF-8"]),
    row("caption-is-a-folder", lambda h: (h / "texts" / f"{ids('train')[0]}.txt").unlink() or
        (h / "texts" / f"{ids('train')[0]}.txt").mkdir(), ["{train:texts}"], ["texts/<id>.txt"]),
    row("caption-bad-line", lambda h: write(f"texts/{ids('test')[0]}.txt", "a man walks\n")(h),
        ["{test:texts}"], ["fix or remove"]),
    row("contacts-nan-points", contacts(points=with_value(np.nan)), ["{train:contacts}"], ["regenerate"]),
    row("contacts-inf-dist", contacts("test", dist=with_value(np.inf, (3, 5))), ["{test:contacts}"], ["regenerate"]),
    row("contacts-wrong-shape", contacts(dist=lambda d: d[:, :21]), ["{train:contacts}"], ["(N,22)"]),
    row("contacts-zero-points", contacts(points=lambda p: p[:0], dist=lambda d: d[:0]), ["{train:contacts}"],
        ["at least one point"]),
    row("contacts-missing-key", contacts(drop="dist"), ["{train:contacts}"], ["`dist`"]),
    row("contacts-broken-zip", lambda h: truncate(f"contacts/{ids('train')[0]}.npz", 200)(h),
        ["{train:contacts}"], ["regenerate"]),
    row("contacts-not-a-zip", lambda h: write(f"contacts/{ids('val')[0]}.npz", "hello")(h),
        ["{val:contacts}"], ["regenerate"]),
    row("split-duplicate-id", lambda h: write("train.txt", (h / "train.txt").read_text() + ids("train")[0] + "\n")(h),
        ["{tmp}/H/train.txt", "{train:id}"], ["each id on one line"]),
    row("split-not-utf8", write("test.txt", b"000001\n\xff\xfe\n"), ["{tmp}/H/test.txt"], ["UTF-8"]),
    # the generator: foreign folders are refused, nothing in them touched
    Case("train-synthetic-into-humanml3d-like-folder", ["train_ray.py", DEMO, "data.root={tmp}/H"],
         setup=files({"H/new_joint_vecs/": "", "H/PRECIOUS.txt": "x"}),
         names=["{tmp}/H", "PRECIOUS.txt"], fix=["data.root=", "never deletes"], may_change=["outputs"]),
    Case("train-synthetic-into-user-dataset", ["train_ray.py", DEMO, "data.root={tmp}/H"], setup=dataset(),
         names=["{tmp}/H", "synthetic_manifest.json"], fix=["data.name=humanml3d"], may_change=["outputs"]),
    row("train-synthetic-changed-after-generation",
        lambda h: write(f"texts/{ids('train')[0]}.txt", (h / "texts" / f"{ids('train')[0]}.txt").read_text()
                        .replace("a", "o", 1))(h), ["{tmp}/H", "texts/{train:id}.txt"],
        ["changed after generation", "delete"],
        argv=["train_ray.py", DEMO, "data.root={tmp}/H", "data.synthetic_num_clips=20"], ours=True),
    Case("synthetic-cli-foreign-folder", ["cmdm.data.synthetic", "--out", "{tmp}/H", "--num", "3"],
         setup=files({"H/meta.json": "{}", "H/notes.md": "mine"}), names=["{tmp}/H", "notes.md"], fix=["--out"]),
    Case("synthetic-cli-out-is-a-file", ["cmdm.data.synthetic", "--out", "{tmp}/H", "--num", "3"],
         setup=lambda tmp: (tmp / "H").write_text("mine"), names=["{tmp}/H"], fix=["--out", "not a folder"]),
    Case("synthetic-cli-num-0", ["cmdm.data.synthetic", "--out", "{tmp}/H", "--num", "0"],
         names=["--num", "0"], fix=["at least 1"]),
    Case("synthetic-cli-points-0", ["cmdm.data.synthetic", "--out", "{tmp}/H", "--points", "0"],
         names=["--points"], fix=["at least 1"]),
]


def _resolve(case):
    """`{split:sub}` -> the first clip of that split's file in {tmp}/H/sub; `{split:id}` -> its id."""
    ext = {"new_joint_vecs": ".npy", "texts": ".txt", "contacts": ".npz"}
    out = []
    for name in case.names:
        for split in ("train", "val", "test"):
            for sub, e in ext.items():
                name = name.replace(f"{{{split}:{sub}}}", f"{{tmp}}/H/{sub}/{ids(split)[0]}{e}")
            name = name.replace(f"{{{split}:id}}", ids(split)[0])
        out.append(name)
    case.names = out
    return case


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(_resolve(case), tmp_path, monkeypatch)


def test_the_dataset_rows_start_from_a_valid_set(tmp_path):
    """The rows' base set passes check_dataset: each row fails on its one broken file only."""
    from cmdm.data.humanml3d import check_dataset
    dataset()(tmp_path)
    assert check_dataset(tmp_path / "H") == 20

"""The preflight's fingerprints (cmdm/preflight.py): a copy of the same files on another disk matches, other
files do not. The checks on a real two-node cluster are in test_cluster_runs.py."""
import shutil

from cmdm.config import Config
from cmdm.preflight import file_fingerprint, needed_files, tree_fingerprint


def _dataset(root):
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "train.txt").write_text("a\nb\n")
    (root / "Mean.npy").write_bytes(b"\x00" * 32)
    (root / "new_joint_vecs" / "a.npy").write_bytes(b"\x01" * 100)
    (root / "new_joint_vecs" / "b.npy").write_bytes(b"\x02" * 50)
    return root


def test_a_copy_has_the_same_fingerprint_and_other_files_do_not(tmp_path):
    data = _dataset(tmp_path / "data")
    copy = tmp_path / "elsewhere" / "data"
    shutil.copytree(data, copy)
    (copy / ".fit.lock").write_text("")                   # a writer's lock file is not part of the data
    assert tree_fingerprint(data) == tree_fingerprint(copy) and len(tree_fingerprint(data)) == 64
    (copy / "train.txt").write_text("a\nc\n")                # same size, other split: a small top-level file
    assert tree_fingerprint(copy) != tree_fingerprint(data)
    shutil.copy(data / "train.txt", copy / "train.txt")
    (copy / "new_joint_vecs" / "b.npy").write_bytes(b"\x02" * 51)
    assert tree_fingerprint(copy) != tree_fingerprint(data)
    assert tree_fingerprint(tmp_path / "missing") is None and file_fingerprint(tmp_path / "missing.pt") is None


def test_what_a_worker_reads_is_listed_by_config_key(tmp_path):
    cfg = Config()
    cfg.data.name, cfg.data.root = "synthetic", str(tmp_path / "data")
    cfg.evaluation.evaluator_dir = str(tmp_path / "ev")
    assert needed_files(cfg) == {"data.root": ("tree", str(tmp_path / "data")),
                                 "evaluation.evaluator_dir": ("file", str(tmp_path / "ev" / "evaluator.pt"))}
    cfg.data.name = "humanml3d"
    keys = needed_files(cfg)
    assert keys["evaluation.glove_dir"] == ("tree", cfg.evaluation.glove_dir)
    assert keys["evaluation.evaluator_dir"][1].endswith("finest.tar")

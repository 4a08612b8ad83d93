"""The synthetic generator never loses a user's file, survives kill -9 and a concurrent twin, and notices a
dataset changed after generation; the evaluator cache is keyed by file contents."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cmdm.data import synthetic as syn
from cmdm.data.humanml3d import DataError

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(seed=0, num_points=32, workers=1, progress=False, log=lambda *_: None)


def cli(out, num, **popen):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "cmdm.data.synthetic", "--out", str(out), "--num", str(num),
                             "--points", "32", "--workers", "1"], env=env, cwd=ROOT, **popen)


def test_foreign_file_survives_and_the_generator_refuses(tmp_path):
    """The issue's case: a HumanML3D-looking folder with a file of the user's is refused, not rmtree'd."""
    out = tmp_path / "H"
    (out / "new_joint_vecs").mkdir(parents=True)
    (out / "PRECIOUS.txt").write_text("x")
    for make in (syn.generate_dataset, syn.ensure_dataset):
        with pytest.raises(DataError, match="PRECIOUS.txt"):
            make(out, 3, **QUIET)
    assert (out / "PRECIOUS.txt").read_text() == "x" and sorted(os.listdir(tmp_path)) == ["H"]
    syn.generate_dataset(tmp_path / "ok", 3, **QUIET)             # ours: replaced, file by file
    syn.generate_dataset(tmp_path / "ok", 4, **QUIET)
    assert len((tmp_path / "ok" / "all.txt").read_text().split()) == 4
    (tmp_path / "ok" / "texts" / "notes.txt").write_text("mine")   # a user's file inside our folder
    with pytest.raises(DataError, match="notes.txt"):
        syn.generate_dataset(tmp_path / "ok", 3, **QUIET)
    assert (tmp_path / "ok" / "texts" / "notes.txt").read_text() == "mine"


def test_a_generation_killed_with_sigkill_is_cleaned_up_by_the_next_run(tmp_path):
    out = tmp_path / "d"
    proc = cli(out, 2000, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = tmp_path / f"d.tmp-{proc.pid}"
    deadline = time.time() + 120
    while not any((tmp / "texts").glob("*.txt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert any((tmp / "texts").glob("*.txt")), "the generator never started writing clips"
    proc.send_signal(signal.SIGKILL)
    proc.wait()                                  # reaped: its pid is dead, not a zombie
    assert tmp.is_dir() and not out.exists()     # what kill -9 leaves behind
    (tmp_path / "d.tmp-notapid").mkdir()         # not a temp folder of ours: left alone
    foreign = tmp_path / f"d.tmp-{proc.pid + 1_000_000}"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")       # a dead pid but not our files: left alone
    logs = []
    syn.ensure_dataset(out, 5, seed=0, num_points=32, workers=1, progress=False, log=logs.append)
    assert not tmp.exists() and any("killed" in line for line in logs)
    assert (foreign / "mine.txt").read_text() == "x" and (tmp_path / "d.tmp-notapid").is_dir()
    assert len((out / "all.txt").read_text().split()) == 5
    assert not syn.dataset_problems(out)["changed"] and not list(tmp_path.glob(".d.lock"))


def test_two_generators_on_one_folder_take_turns_and_both_succeed(tmp_path):
    """The test holds the lock while both start, so both must wait; released, they run one after the other."""
    out = tmp_path / "d"
    with syn.generator_lock(out.resolve(), log=lambda *_: None):
        procs = [cli(out, 30, stdout=subprocess.PIPE, stderr=open(tmp_path / f"err{i}", "w"), text=True)
                 for i in range(2)]
        deadline = time.time() + 120
        while time.time() < deadline and not all("waiting for another generator" in (tmp_path / f"err{i}").read_text()
                                                  for i in range(2)):
            assert all(p.poll() is None for p in procs), "a generator did not wait for the lock"
            time.sleep(0.05)
        assert not out.exists()
    codes = [p.wait(timeout=300) for p in procs]
    errs = [(tmp_path / f"err{i}").read_text() for i in range(2)]
    assert codes == [0, 0], errs
    assert all("waiting for another generator" in e for e in errs)
    found = syn.dataset_problems(out)
    assert found["manifest"]["settings"]["num_clips"] == 30
    assert not any(found[k] for k in ("foreign", "changed", "missing"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "err0", "err1"]   # no temp folder, no lock file


def test_a_removed_file_is_regenerated_and_a_changed_one_refused(tmp_path):
    out = syn.ensure_dataset(tmp_path / "d", 6, **QUIET)
    meta = (out / "meta.json").stat().st_mtime_ns
    assert syn.ensure_dataset(out, 6, **QUIET) == out and (out / "meta.json").stat().st_mtime_ns == meta
    clip = out / "new_joint_vecs" / "000002.npy"
    original = clip.read_bytes()
    clip.unlink()                                                    # removed: detected, regenerated
    assert syn.dataset_problems(out)["missing"] == ["new_joint_vecs/000002.npy"]
    syn.ensure_dataset(out, 6, **QUIET)
    assert clip.read_bytes() == original
    m = np.load(clip)
    m[5, 0] += 1.0                                                   # changed, same size: detected, refused
    np.save(clip, m)
    assert syn.dataset_problems(out)["changed"] == ["new_joint_vecs/000002.npy"]
    with pytest.raises(DataError, match="changed after generation"):
        syn.ensure_dataset(out, 6, **QUIET)
    np.testing.assert_array_equal(np.load(clip), m)                  # the change is kept
    with pytest.raises(DataError, match="new_joint_vecs/000002.npy"):
        syn.generate_dataset(out, 6, **QUIET)
    (out / "synthetic_manifest.json").unlink()                       # no manifest: not provably ours
    with pytest.raises(DataError, match="synthetic_manifest.json"):
        syn.ensure_dataset(out, 6, **QUIET)


def test_evaluator_fingerprint_follows_file_contents(tmp_path):
    from cmdm.evaluation.fit import data_fingerprint
    out = syn.generate_dataset(tmp_path / "d", 6, **QUIET)
    before = data_fingerprint(out)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copyfile)        # new mtimes, same bytes: same key
    assert data_fingerprint(copy) == before
    clip = copy / "new_joint_vecs" / "000001.npy"
    m = np.load(clip)
    m[3, 3] += 0.5                                                   # same size, other contents
    np.save(clip, m)
    assert data_fingerprint(copy) != before
    shutil.copyfile(out / "new_joint_vecs" / "000001.npy", clip)
    assert data_fingerprint(copy) == before
    np.save(copy / "Mean.npy", np.load(copy / "Mean.npy") + 1)
    assert data_fingerprint(copy) != before


def test_files_the_project_derives_from_a_dataset_do_not_make_it_foreign(tmp_path):
    """Caption features (cmdm.prepare) and preview GIFs (--preview) live in the dataset: reuse and replace it."""
    out = syn.generate_dataset(tmp_path / "d", 4, **QUIET)
    (out / "text_features").mkdir()
    (out / "text_features" / "all-MiniLM-L6-v2-len77-pooled.pt").write_bytes(b"x")
    (out / "preview").mkdir()
    (out / "preview" / "000001.gif").write_bytes(b"x")
    mtime = (out / "meta.json").stat().st_mtime_ns
    assert syn.ensure_dataset(out, 4, **QUIET) == out and (out / "meta.json").stat().st_mtime_ns == mtime
    syn.ensure_dataset(out, 5, **QUIET)                              # other settings: replaced, derived files too
    assert not (out / "text_features").exists() and len((out / "all.txt").read_text().split()) == 5
    (out / "preview").mkdir()
    (out / "preview" / "notes.txt").write_text("mine")               # not a derived file: refused
    with pytest.raises(DataError, match="preview/notes.txt"):
        syn.ensure_dataset(out, 4, **QUIET)


def test_a_reused_dataset_also_cleans_a_killed_regenerations_temp_folder(tmp_path):
    out = syn.generate_dataset(tmp_path / "d", 3, **QUIET)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    shutil.copytree(out, tmp_path / f"d.tmp-{dead.pid}")               # what a killed regeneration leaves
    assert syn.ensure_dataset(out, 3, **QUIET) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_an_unreadable_caption_file_is_a_data_error_naming_it(tmp_path, monkeypatch):
    """(Permissions cannot be tested as root: the OSError is raised for the file instead.)"""
    from cmdm.data.humanml3d import read_captions
    path = tmp_path / "000000.txt"
    path.write_text("a man walks#a/DET man/NOUN walk/VERB#0.0#0.0\n")
    real = Path.read_text

    def denied(self, *a, **kw):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)
    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(DataError, match=f"{path} cannot be read \\(Permission denied\\)"):
        read_captions(path)

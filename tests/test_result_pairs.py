"""Results are consistent pairs, never half: the model_best.pt / best_metrics.json pair, the export folder,
and the modes of the files cmdm/atomic.py writes."""
import hashlib
import json
import os
import shutil
import stat

import pytest
import torch

from cmdm.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text, torch_bytes
from cmdm.run_files import read_best, reconcile_best, save_best
from cmdm.tuning.export import ExportError, export_best, find_best_trial
from test_bad_input_cli import tiny_cfg, trial


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test (and put the old one back)."""
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


def sweep(tmp_path, *trials):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text('{"metric": "fid", "mode": "min"}')
    return {trial_id: trial(tmp_path, trial_id, fid) for trial_id, fid in trials}


def new_best_pt_only(files, fid):
    """What a crash between the two renames of save_best leaves: the new model_best.pt, the old json."""
    atomic_write_bytes(files.best, torch_bytes({"model": {"w": torch.full((2,), fid)}, "config": {},
                                                "metrics": {"fid": fid, "step": 20, "epoch": 2}}))


# ---------------------------------------------------------------------------- file modes

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask, mask):
    umask(mask)
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_write_bytes(tmp_path / "b.bin", b"x")
    atomic_torch_save({"w": torch.ones(1)}, tmp_path / "c.pt")
    expected = 0o666 & ~mask
    assert mode(tmp_path / "plain.txt") == expected
    assert [mode(tmp_path / n) for n in ("a.txt", "b.bin", "c.pt")] == [expected] * 3


def test_a_replaced_file_keeps_its_mode(tmp_path, umask):
    path = tmp_path / "r.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    atomic_write_text(path, '{"a": 1}')
    assert mode(path) == 0o640 and json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]      # no temp file left


# ---------------------------------------------------------------------------- the best pair

def test_the_json_names_the_checkpoint_it_belongs_to(tmp_path):
    files = trial(tmp_path, "t", 1.5)
    on_disk = json.loads(files.best_json.read_text())
    assert on_disk["checkpoint_sha256"] == hashlib.sha256(files.best.read_bytes()).hexdigest()
    assert torch.load(files.best, weights_only=True)["metrics"]["fid"] == on_disk["fid"] == 1.5
    assert read_best(files.checkpoints) == on_disk


def test_a_crash_between_the_two_writes_is_read_as_the_checkpoint_says(tmp_path):
    files = trial(tmp_path, "t", 5.0)
    stale = files.best_json.read_text()
    new_best_pt_only(files, 0.5)
    assert json.loads(files.best_json.read_text())["fid"] == 5.0          # the json alone would lie
    rec = read_best(files.checkpoints)
    assert rec["fid"] == 0.5 and rec["step"] == 20
    assert rec["checkpoint_sha256"] == hashlib.sha256(files.best.read_bytes()).hexdigest()
    assert files.best_json.read_text() == stale                            # a reader does not write
    # the run that owns the folder repairs the json on resume
    assert reconcile_best(files)["fid"] == 0.5
    assert read_best(files.checkpoints) == json.loads(files.best_json.read_text())


@pytest.mark.parametrize("damage", ["missing", "corrupt", "hand-edited"])
def test_a_json_that_is_not_the_pair_is_not_believed(tmp_path, damage):
    files = trial(tmp_path, "t", 2.0)
    if damage == "missing":
        files.best_json.unlink()
    elif damage == "corrupt":
        files.best_json.write_text("{")
    else:
        files.best_json.write_text(json.dumps({"fid": 0.001, "checkpoint_sha256": "0" * 64}))
    assert read_best(files.checkpoints)["fid"] == 2.0


def test_no_readable_checkpoint_no_record(tmp_path):
    files = trial(tmp_path, "t", 2.0)
    files.best.write_bytes(b"truncated")
    assert read_best(files.checkpoints) is None
    files.best.unlink()
    assert read_best(files.checkpoints) is None


def test_sweep_ranking_uses_the_checkpoints_own_metrics(tmp_path):
    files = sweep(tmp_path, ("a", 1.0), ("b", 5.0), ("c", 3.0))
    new_best_pt_only(files["b"], 0.5)                                      # b's json still says 5.0
    files["c"].best_json.write_text(json.dumps({"fid": 0.1}))              # c's json claims a best it has not
    run_dir, rec = find_best_trial(tmp_path / "sweep")
    assert run_dir.name == "b" and rec["fid"] == 0.5


# ---------------------------------------------------------------------------- export: one unit

def exported(out):
    pt = torch.load(out / "model_best.pt", weights_only=True)
    rec = json.loads((out / "best_metrics.json").read_text())
    return pt, rec


def test_export_writes_a_consistent_pair_with_its_trials_config(tmp_path, umask):
    umask(0o027)
    files = sweep(tmp_path, ("a", 1.0), ("b", 5.0))
    new_best_pt_only(files["b"], 0.5)
    out = export_best(tmp_path / "sweep")
    assert out == tmp_path / "sweep" / "best"
    pt, rec = exported(out)
    assert rec["fid"] == pt["metrics"]["fid"] == 0.5
    assert rec["checkpoint_sha256"] == hashlib.sha256((out / "model_best.pt").read_bytes()).hexdigest()
    assert read_best(out) == rec
    assert (out / "config.yaml").read_bytes() == files["b"].config.read_bytes()
    assert "trial b " in (out / "SOURCE.txt").read_text()
    assert mode(out) == 0o750 and {mode(p) for p in out.iterdir()} == {0o640}
    assert [p.name for p in (tmp_path / "sweep").iterdir() if p.name.startswith(".")] == []


def test_a_second_export_replaces_the_first_as_a_whole(tmp_path):
    files = sweep(tmp_path, ("a", 1.0), ("b", 5.0))
    out = export_best(tmp_path / "sweep", tmp_path / "best")
    assert exported(out)[1]["fid"] == 1.0
    save_best(files["b"], {"w": torch.zeros(2)}, {"fid": 0.2, "step": 30}, tiny_cfg(tmp_path))
    export_best(tmp_path / "sweep", tmp_path / "best")
    pt, rec = exported(out)
    assert rec["fid"] == pt["metrics"]["fid"] == 0.2 and "trial b " in (out / "SOURCE.txt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "sweep"]          # no temp or old folder


@pytest.mark.parametrize("fails_at", ["config.yaml", "rename"])
def test_a_failure_half_way_leaves_the_old_export(tmp_path, monkeypatch, fails_at):
    files = sweep(tmp_path, ("a", 1.0), ("b", 5.0))
    out = export_best(tmp_path / "sweep", tmp_path / "best")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    save_best(files["b"], {"w": torch.zeros(2)}, {"fid": 0.2, "step": 30}, tiny_cfg(tmp_path))
    import cmdm.tuning.export as export
    if fails_at == "config.yaml":
        real = shutil.copyfile

        def copyfile(src, dst, **kw):
            if str(src).endswith("config.yaml"):
                raise OSError(28, "No space left on device")
            return real(src, dst, **kw)
        monkeypatch.setattr(export.shutil, "copyfile", copyfile)
    else:
        real = os.rename
        calls = []

        def rename(src, dst):     # the second rename (new folder -> out) fails
            calls.append(dst)
            if len(calls) == 2:
                raise OSError(5, "I/O error")
            return real(src, dst)
        monkeypatch.setattr(export.os, "rename", rename)
    with pytest.raises(OSError):
        export_best(tmp_path / "sweep", tmp_path / "best")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before        # trial a's export, all of it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "sweep"]


def test_a_failed_first_export_leaves_nothing(tmp_path, monkeypatch):
    sweep(tmp_path, ("a", 1.0))
    import cmdm.tuning.export as export
    real = shutil.copyfile
    monkeypatch.setattr(export.shutil, "copyfile", lambda s, d, **k: real(s, d, **k) if "model_best" in str(s)
                        else (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        export_best(tmp_path / "sweep", tmp_path / "best")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_export_refuses_a_folder_it_did_not_write(tmp_path):
    sweep(tmp_path, ("a", 1.0))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model_best.pt").write_bytes(b"my own")      # an export's file name, but no SOURCE.txt
    with pytest.raises(ExportError, match="not an earlier export"):
        export_best(tmp_path / "sweep", mine)
    assert (mine / "model_best.pt").read_bytes() == b"my own"

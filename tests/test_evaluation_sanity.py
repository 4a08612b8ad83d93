"""The sanity table: corruptions are made in joint space and the rows are scored by the project's own metrics."""
import json

import numpy as np
import pytest

from cmdm import skeleton
from cmdm.data.humanml3d import MotionDataset
from cmdm.evaluation import metrics, sanity
from cmdm.evaluation.evaluator import load_fitted_evaluator


def _clips(root, split):
    ds = MotionDataset(root, split, use_contacts=False, train=False, progress=False)
    return ds.entries


def test_round_trip_through_joints_gives_the_features_back(tiny):
    """features -> joints (T+1 frames) -> features gives the stored features back: the corruptions alone change them.

    On the uncropped clip: a crop drops up to 3 frames, and the facing is smoothed with a gaussian of 20 frames
    ('nearest' at the ends), so facing-dependent dims near a crop's end move by up to ~5e-3. Whole clips only: a sub-clip
    (HumanML3D's `#start#end` captions) does not start facing +z with its raw facing, so re-canonicalising
    rotates it (the table's `round trip` row measures what that costs the evaluator).
    """
    whole = [e for e in _clips(tiny / "data", "test") if e.name == e.motion_id]
    assert whole
    for entry in whole[:5]:
        f = entry.motion                                   # uncropped: every frame the facing was smoothed over
        back = sanity.corrupt("round trip", f, np.random.default_rng(0))
        assert back.shape == f.shape
        np.testing.assert_allclose(back, f, atol=1e-4)


def test_corruptions_are_what_their_names_say(tiny):
    f = sanity.crop(_clips(tiny / "data", "test")[0].motion)
    rng = np.random.default_rng(0)
    joints = sanity.features_to_joints(f)
    frozen = sanity.corrupt("frozen pose", f, rng)
    # row 0's root turn is the jump from the identity forced at frame 0 to the smoothed facing (skeleton.py)
    assert np.abs(frozen[:, skeleton.LOCAL_VEL]).max() < 1e-6 and np.abs(frozen[1:, :3]).max() < 1e-6
    assert (frozen[:, skeleton.FOOT_CONTACT] == 1).all()
    noisy = sanity.jitter(joints, rng, 0.03)
    assert abs((noisy - joints).std() - 0.03) < 0.002
    reversed_ = sanity.joints_to_features(joints[::-1])
    floor = joints[:, :, 1].min()                                   # canonicalize puts the clip's lowest joint at 0
    np.testing.assert_allclose(reversed_[1:, 3], f[::-1, 3][:-1] - floor, atol=1e-4)   # row k = frame T - k
    slid = sanity.foot_sliding(joints, rng)
    drift = (slid - joints)[:, 0]
    planted = skeleton.feet_contacts(joints).any(1)
    steps = np.linalg.norm(np.diff(drift, axis=0), axis=1)
    np.testing.assert_allclose(steps, planted * sanity.SLIDE_SPEED / sanity.FPS, atol=1e-9)
    shuffled = sanity.shuffled_segments(joints, rng)
    assert shuffled.shape == joints.shape
    assert np.linalg.norm(np.diff(shuffled[:, 0, [0, 2]], axis=0), axis=1).max() < 0.2   # no teleport at the cuts


def test_sanity_command_prints_the_table_from_the_projects_metrics(tiny, tmp_path, capsys, monkeypatch):
    calls = {"fid": 0, "r_precision": 0}
    fid, r_precision = metrics.fid, metrics.r_precision

    def counting_fid(*a, **k):
        calls["fid"] += 1
        return fid(*a, **k)

    def counting_r_precision(*a, **k):
        calls["r_precision"] += 1
        return r_precision(*a, **k)

    monkeypatch.setattr(metrics, "fid", counting_fid)
    monkeypatch.setattr(metrics, "r_precision", counting_r_precision)
    out = tmp_path / "sanity.json"
    code = sanity.main(["--evaluator", str(tiny / "evaluator"), "--data", str(tiny / "data"), "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    for name in sanity.ROWS:
        assert f"| {name} |" in text
    assert text.count("] ") == 4                                # the four goals, each ok or FAILS
    table = json.loads(out.read_text())
    assert set(sanity.ROWS) <= set(table) and table["chance_top1"] == 1 / 32
    assert calls["fid"] == len(sanity.ROWS) - 1                 # the swap row reuses the clean FID
    assert calls["r_precision"] == 10 * len(sanity.ROWS)        # 10 batchings per row

    # The clean row, recomputed here: FID of the test motions (cropped from frame 0) against the train motions.
    ev = load_fitted_evaluator(tiny / "evaluator")
    test = [sanity.crop(e.motion) for e in _clips(tiny / "data", "test")]
    train = [sanity.crop(e.motion) for e in _clips(tiny / "data", "train")]
    assert table["num_test"] == len(test) and table["num_train"] == len(train)
    clean = fid(sanity.embed_clips(ev, test), sanity.embed_clips(ev, train))
    assert table["clean"]["fid"] == pytest.approx(clean, rel=1e-6)
    assert table["captions swapped"]["fid"] == table["clean"]["fid"]
    for name in sanity.ROWS:
        assert table[name]["fid_ratio"] == pytest.approx(table[name]["fid"] / clean, rel=1e-6)
        assert 0 <= table[name]["top1"] <= 1


def test_goals_are_checked_as_stated():
    row = lambda fid, top1=0.5: {"fid": fid, "fid_ratio": fid, "top1": top1}  # noqa: E731
    table = {name: row(10.0) for name in sanity.ROWS}
    table.update({"clean": row(1.0), "round trip": row(1.0), "jitter 0.01 m": row(2.0), "jitter 0.03 m": row(3.0),
                  "jitter 0.1 m": row(9.0), "captions swapped": row(1.0, 1 / 16), "chance_top1": 1 / 32})
    assert all(ok for _, ok in sanity.check_goals(table))
    table["jitter 0.03 m"] = row(2.5)
    table["captions swapped"] = row(1.0, 0.07)
    assert [ok for _, ok in sanity.check_goals(table)] == [True, False, True, False]

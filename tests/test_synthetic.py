"""cmdm.data.synthetic: the procedural HumanML3D-layout dataset (files, determinism, physics,
captions, contacts). About 10 s: three 40-clip datasets and ~70 single clips."""
import json
import re

import numpy as np
import pytest

from cmdm import skeleton as sk
from cmdm.data import synthetic as syn
from cmdm.data.humanml3d import DataError
from cmdm.data.synthetic import writer

NUM, POINTS = 40, 512
POS_TAGS = {"VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV", "CCONJ", "PART",
            "SCONJ"}
TOKEN = re.compile(r"^[a-z]+/([A-Z]+)$")
FEET = [7, 10, 8, 11]          # order of the 4 foot-contact dims


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same seed twice (1 and 2 workers) and another seed."""
    root = tmp_path_factory.mktemp("syn")
    a = syn.generate_dataset(root / "a", NUM, seed=0, num_points=POINTS, workers=2,
                             progress=False)
    b = syn.generate_dataset(root / "b", NUM, seed=0, num_points=POINTS, workers=1,
                             progress=False)
    c = syn.generate_dataset(root / "c", NUM, seed=1, num_points=POINTS, workers=2,
                             progress=False)
    return a, b, c


@pytest.fixture(scope="module")
def family_clips():
    """Three single-action clips of every family (generate_clip, with the generator's extras)."""
    return {f: [syn.generate_clip(100 + k, i, families=[f])
                for i in range(3)] for k, f in enumerate(syn.FAMILIES)}


def clips_where(family, want, n=60):
    """Single-action clips of `family` until `want(params)` has been seen for every key."""
    found = {}
    for i in range(n):
        clip = syn.generate_clip(7, i, num_points=64, families=[family])
        key = want(clip["actions"][0]["params"])
        found.setdefault(key, clip)
    return found


def split(root, name):
    return (root / f"{name}.txt").read_text().split()


def body_frame(joints, f, vec):
    """(left, forward) components of a horizontal vector in the body frame of frame f."""
    yaw = syn.facing_yaw(joints[f])
    return float(vec @ syn.left_vec(yaw)), float(vec @ syn.heading_vec(yaw))


# ----------------------------------------------------------------------------- files

def test_same_seed_gives_identical_bytes_and_other_seed_differs(data):
    a, b, c = data
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len(files) == 4 * NUM + 8      # + meta.json, splits, Mean/Std, the manifest
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    differ = [(a / "new_joint_vecs" / p.name).read_bytes() != p.read_bytes()
              for p in (c / "new_joint_vecs").iterdir()]
    assert sum(differ) == NUM


def test_layout(data):
    root = data[0]
    train, val, test = split(root, "train"), split(root, "val"), split(root, "test")
    assert sorted(train + val + test) == split(root, "all") == [f"{i:06d}" for i in range(NUM)]
    assert len(set(train) | set(val) | set(test)) == NUM
    assert (len(val), len(test)) == (round(0.05 * NUM), round(0.15 * NUM))
    for cid in train + val + test:
        feats = np.load(root / "new_joint_vecs" / f"{cid}.npy")
        joints = np.load(root / "new_joints" / f"{cid}.npy")
        T = len(feats)
        assert feats.dtype == np.float32 and feats.shape == (T, 263) and 40 <= T < 200
        assert joints.dtype == np.float32 and joints.shape == (T, 22, 3)
        assert np.isfinite(feats).all()
        with np.load(root / "contacts" / f"{cid}.npz") as z:
            assert z["points"].shape == (POINTS, 6) and z["points"].dtype == np.float32
            assert z["dist"].shape == (POINTS, 22) and z["dist"].dtype == np.float32
        lines = (root / "texts" / f"{cid}.txt").read_text().splitlines()
        whole = 0
        for line in lines:
            fields = line.split("#")
            assert len(fields) == 4, line
            caption, tokens, start, end = fields[0], fields[1].split(), float(fields[2]), \
                float(fields[3])
            assert caption and tokens
            for tok in tokens:
                m = TOKEN.match(tok)
                assert m and m.group(1) in POS_TAGS, tok
            if start == end == 0.0:
                whole += 1
            else:
                assert 0 <= start < end <= T / syn.FPS + 0.1
        assert whole == 3 and len(set(lines[:3])) == 3
    mean, std = np.load(root / "Mean.npy"), np.load(root / "Std.npy")
    assert mean.shape == std.shape == (263,) and (std > 0).all()
    meta = json.loads((root / "meta.json").read_text())
    assert meta["num_clips"] == NUM and meta["seed"] == 0 and meta["fps"] == 20
    assert "generated" in meta["licence"]
    assert sum(meta["actions_per_family"].values()) >= NUM


def test_mean_std_follow_humanml3d_groups(data):
    root = data[0]
    feats = np.concatenate([np.load(root / "new_joint_vecs" / f"{c}.npy")
                            for c in split(root, "train")]).astype(np.float64)
    std = feats.std(0)
    groups = [(0, 1), (1, 3), (3, 4), (4, 67), (67, 193), (193, 259), (259, 263)]
    for lo, hi in groups:
        std[lo:hi] = std[lo:hi].mean()
    np.testing.assert_allclose(np.load(root / "Mean.npy"), feats.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.load(root / "Std.npy"), std, rtol=1e-5)


def test_joints_are_recovered_from_features(data):
    root = data[0]
    for cid in split(root, "all")[:10]:
        feats = np.load(root / "new_joint_vecs" / f"{cid}.npy")
        np.testing.assert_allclose(sk.recover_from_ric(feats),
                                   np.load(root / "new_joints" / f"{cid}.npy"), atol=1e-6)


def test_interrupted_run_leaves_nothing_and_ensure_reuses(tmp_path, monkeypatch):
    out = tmp_path / "d"

    def boom(index, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(writer, "_write_clip", boom)
    with pytest.raises(KeyboardInterrupt):
        syn.generate_dataset(out, 3, seed=0, num_points=32, workers=1, progress=False)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    syn.ensure_dataset(out, 3, seed=0, num_points=32, progress=False)
    mtime = (out / "meta.json").stat().st_mtime_ns
    syn.ensure_dataset(out, 3, seed=0, num_points=32, progress=False)   # same: kept
    assert (out / "meta.json").stat().st_mtime_ns == mtime
    syn.ensure_dataset(out, 4, seed=0, num_points=32, progress=False)   # other size: redone
    assert len(split(out, "all")) == 4
    marker = out / "marker"                  # a file the generator did not write: never deleted
    marker.write_text("x")
    with pytest.raises(DataError, match="marker"):
        syn.ensure_dataset(out, 5, seed=0, num_points=32, progress=False)
    assert marker.read_text() == "x" and len(split(out, "all")) == 4


# ----------------------------------------------------------------------------- physics

def all_clips(family_clips):
    return [c for cs in family_clips.values() for c in cs] + \
        [syn.generate_clip(3, i, num_points=64) for i in range(20)]


def test_bones_rigid_feet_on_floor_and_planted_feet_still(family_clips):
    lengths = None
    for clip in all_clips(family_clips):
        J = clip["joints"].astype(np.float64)
        bones = np.linalg.norm(J[:, 1:] - J[:, sk.PARENTS[1:]], axis=-1)
        assert np.ptp(bones, axis=0).max() < 1e-4, clip["families"]      # FK, real bones
        lengths = bones[0] if lengths is None else lengths
        assert J[:, FEET, 1].min() >= -0.01                                 # no penetration
        planted = clip["planted"]
        for s, (ankle, toe) in enumerate([(7, 10), (8, 11)]):
            if "climb" not in clip["families"] and planted[:, s].any():    # stands on y = 0
                assert J[planted[:, s], toe, 1].max() < 0.01
            # every stance phase: the foot stays put (< 2 cm) horizontally
            edges = np.flatnonzero(np.diff(np.r_[0, planted[:, s].astype(int), 0]))
            for a, b in zip(edges[::2], edges[1::2]):
                for j in (ankle, toe):
                    drift = np.linalg.norm(J[a:b, j, [0, 2]] - J[a, j, [0, 2]], axis=-1)
                    assert drift.max() < 0.02, (clip["families"], j, a, b)


def test_foot_contact_labels_do_not_skate(family_clips):
    """A contact label means a 3D step under sqrt(0.002) = 4.5 cm/frame (HumanML3D's
    threshold), so labelled frames can never move faster than that. That threshold still
    allows visible sliding (0.9 m/s), so also: a labelled foot that stays on the floor
    (within 5 mm in both frames) moves < 5 mm/frame (a planted foot is still; this is noise)."""
    for clip in all_clips(family_clips):
        J, labels = clip["joints"].astype(np.float64), clip["features"][:, 259:263]
        for k, j in enumerate(FEET):
            step = np.linalg.norm(J[1:, j, [0, 2]] - J[:-1, j, [0, 2]], axis=-1)
            on = labels[:-1, k] > 0.5
            assert (step[on] < np.sqrt(0.002)).all()
            low = J[:, j, 1] < J[:, j, 1].min() + 0.005
            still = on & low[:-1] & low[1:]
            assert (step[still] < 0.005).all(), (clip["families"], j)


def test_body_upright(family_clips):
    low_ok = {"sit", "stand", "squat", "jump", "bow", "pick", "climb"}
    for clip in all_clips(family_clips):
        J = clip["joints"]
        assert (J[:, 15, 1] > J[:, 0, 1] + 0.2).all()                   # head above pelvis
        assert J[:, 0, 1].min() > 0.3
        if not low_ok & set(clip["families"]):
            assert J[:, 0, 1].min() > 0.6, clip["families"]


def test_walks_go_where_the_caption_says():
    walks = clips_where("walk", lambda p: p["mode"])
    assert set(walks) == {"forward", "backward", "left", "right", "curve"}
    for mode, clip in walks.items():
        a, J = clip["actions"][0], clip["joints"]
        end = min(a["end"], len(J)) - 1
        left, fwd = body_frame(J, a["start"], J[end, 0, [0, 2]] - J[a["start"], 0, [0, 2]])
        caption = " ".join(clip["captions"])
        if mode == "forward":
            assert fwd > 0.5 and abs(left) < 0.3 * fwd
        elif mode == "backward":
            assert fwd < -0.5 and abs(left) < 0.3 * -fwd
        else:
            side = "left" if a["params"]["turn"] > 0 else "right"
            assert (left > 0.3) == (side == "left") and abs(left) > 0.3, (mode, left)
            assert side in caption


def test_turns_rotate_to_the_captioned_side():
    turns = clips_where("turn", lambda p: p["angle"] > 0)
    assert set(turns) == {True, False}
    for is_left, clip in turns.items():
        a, J = clip["actions"][0], clip["joints"]
        yaw = np.unwrap(syn.facing_yaw(J))
        turned = yaw[min(a["end"], len(J)) - 1] - yaw[a["start"]]
        assert np.sign(turned) == np.sign(a["params"]["angle"])
        assert abs(turned - a["params"]["angle"]) < 0.35
        for caption in clip["captions"]:
            assert ("left" if is_left else "right") in caption.split()[-1] + caption


def test_sitting_lands_on_the_seat_and_climbing_on_the_step(family_clips):
    for clip in family_clips["sit"] + family_clips["stand"]:
        a, J, P = clip["actions"][0], clip["joints"], clip["points"]
        f = min(a["end"], len(J)) - 1 if a["family"] == "sit" else a["start"]
        seat = P[(P[:, 4] > 0.9) & (P[:, 1] > 0.2)]                      # upward, above floor
        seat = seat[seat[:, 1] < seat[:, 1].min() + 0.01]                 # not the backrest top
        assert np.linalg.norm(seat[:, :3] - J[f, 0], axis=-1).min() < 0.1
        assert 0.03 < J[f, 0, 1] - seat[0, 1] < 0.1                       # on it, not in it
        rect = np.array([body_frame(J, f, p) for p in seat[:, [0, 2]]])
        pelvis = np.array(body_frame(J, f, J[f, 0, [0, 2]]))
        assert (rect.min(0) < pelvis).all() and (pelvis < rect.max(0)).all()
    for clip in family_clips["climb"]:
        J, P, h = clip["joints"], clip["points"], clip["actions"][0]["params"]["height"]
        top = P[(P[:, 4] > 0.9) & (P[:, 1] > 0.05)]
        assert abs(top[:, 1].max() - h) < 1e-3
        box = np.array([body_frame(J, -1, p) for p in top[:, [0, 2]]])    # top in body frame
        for toe in (10, 11):
            assert abs(J[-1, toe, 1] - h) < 0.02                              # on the top
            foot = np.array(body_frame(J, -1, J[-1, toe, [0, 2]]))
            assert (box.min(0) < foot).all() and (foot < box.max(0)).all()   # inside it


# ----------------------------------------------------------------------------- text, contacts

def test_captions_name_the_action_and_side(family_clips):
    for family, clips in family_clips.items():
        for clip in clips:
            p = clip["actions"][0]["params"]
            side = {"turn": None}.get(family, p.get("side"))
            for line in clip["text_lines"]:
                caption, tokens = line.split("#")[:2]
                lemmas = {t.split("/")[0] for t in tokens.split()}
                assert lemmas & set(syn.FAMILY_VERBS[family]), (family, caption)
                words = caption.rstrip(".").split()
                if side is not None:
                    assert syn.SIDE_NAMES[side] in words, caption
                if family == "turn":
                    assert ("left" if p["angle"] > 0 else "right") in words, caption
                if family == "raise" and p["which"] != "both":
                    assert p["which"] in words, caption


def test_multi_action_clips_caption_each_part():
    clip = syn.generate_clip(5, 0, num_points=64, families=["walk", "sit", "stand"])
    backward = clip["actions"][0]["params"]["mode"] == "backward"
    assert clip["families"] == ["walk"] + ["turn"] * (not backward) + ["sit", "stand"]
    whole = [l for l in clip["text_lines"] if l.endswith("#0.0#0.0")]
    parts = [l for l in clip["text_lines"] if not l.endswith("#0.0#0.0")]
    assert len(whole) == 3 and len(parts) == len(clip["actions"])
    for line, action in zip(parts, clip["actions"]):
        start, end = map(float, line.split("#")[2:])
        assert (start, end) == (round(action["start"] / 20, 2), round(action["end"] / 20, 2))
        lemmas = {t.split("/")[0] for t in line.split("#")[1].split()}
        assert lemmas & set(syn.FAMILY_VERBS[action["family"]])
    for line in whole:
        lemmas = {t.split("/")[0] for t in line.split("#")[1].split()}
        for family in ("walk", "sit", "stand"):
            assert lemmas & set(syn.FAMILY_VERBS[family])


def test_tagging():
    assert syn.tag_caption("A person waves his left hand twice, then turns to the left.") == (
        "a/DET person/NOUN wave/VERB his/DET left/ADJ hand/NOUN twice/ADV then/ADV turn/VERB "
        "to/ADP the/DET left/NOUN")
    assert syn.tag_caption("someone does three deep squats") == \
        "someone/PRON do/VERB three/NUM deep/ADJ squat/NOUN"


def test_contact_distances_match_brute_force(data):
    root = data[0]
    joints = np.load(root / "new_joints" / "000003.npy").astype(np.float64)
    with np.load(root / "contacts" / "000003.npz") as z:
        points, dist = z["points"], z["dist"]
    brute = np.linalg.norm(points[:, None, None, :3] - joints[None], axis=-1).min(1)
    np.testing.assert_allclose(dist, brute, atol=1e-5)


def test_preview_gif(tmp_path):
    from PIL import Image
    from cmdm.viz import render_motion_frames, save_gif
    clip = syn.generate_clip(0, 1, num_points=64)
    frames = render_motion_frames(clip["joints"][:6], "a title", clip["points"], size=96)
    assert frames.shape == (6, 96, 96, 3) and frames.dtype == np.uint8
    path = save_gif(clip["joints"][:8], tmp_path / "x.gif", "a title", every=2, size=96)
    assert Image.open(path).n_frames == 4 and list(tmp_path.iterdir()) == [path]

"""cmdm.skeleton against the real HumanML3D sample 012314 and against scipy.

Measured on the sample (see cmdm/skeleton.py's docstring for the why):
  recover_from_ric vs new_joints: 2.4e-7 numpy, 0 torch float32.
  extract_features(recover_from_ric(x)) vs x[:169], rows 0..88: 2.0e-6 (6D), <= 3.1e-7 others.
  rows 89..168 (facing smoothed over a frame we no longer have): root rot vel 3.0e-4,
  root lin vel 1.4e-4, ric 6.8e-3, 6D 1.3e-2, joint velocity 4.1e-4; root y and contacts 0.
  With the lost last frame rebuilt from the last velocity row, all 170 rows: 2.0e-6.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cmdm import skeleton as sk

DATA = Path(__file__).parent / "data" / "humanml3d_sample"
EXACT_TOL = 1e-5      # float32 storage noise; measured max 2.0e-6 (6D), 3.1e-7 elsewhere
SMOOTH_RADIUS = 80    # scipy's gaussian radius = int(4 * sigma + 0.5) frames, sigma = 20
GROUPS = {
    "root_rot_vel": sk.ROOT_ROT_VEL, "root_lin_vel": sk.ROOT_LIN_VEL, "root_y": sk.ROOT_Y,
    "ric": sk.RIC, "rot6d": sk.ROT6D, "local_vel": sk.LOCAL_VEL, "foot_contact": sk.FOOT_CONTACT,
}
# Bounds for rows whose smoothed facing saw the lost frame: ~1.5x the measured maxima.
TAIL_TOL = {
    "root_rot_vel": 5e-4, "root_lin_vel": 2e-4, "root_y": 0.0, "ric": 1e-2,
    "rot6d": 2e-2, "local_vel": 6e-4, "foot_contact": 0.0,
}


@pytest.fixture(scope="module")
def feats():
    return np.load(DATA / "new_joint_vecs" / "012314.npy")


@pytest.fixture(scope="module")
def joints():
    return np.load(DATA / "new_joints" / "012314.npy")


def rand_quats(rng, n):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def wxyz(r: Rotation):
    return np.roll(r.as_quat(), 1, axis=-1)


def xyzw(q):
    return np.roll(q, -1, axis=-1)


def same_rotation(q1, q2, atol=1e-10):
    return np.allclose(np.abs((q1 * q2).sum(-1)), 1.0, atol=atol)


# ----------------------------------------------------------------------------- constants

def test_constants():
    assert sk.NUM_JOINTS == len(sk.JOINT_NAMES) == len(sk.PARENTS) == 22
    assert sk.PARENTS == [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19]
    assert sk.RAW_OFFSETS.shape == (22, 3)
    assert np.allclose(np.linalg.norm(sk.RAW_OFFSETS[1:], axis=-1), 1.0)
    assert [sk.JOINT_NAMES[i] for i in sk.FACE_JOINTS] == [
        "right_hip", "left_hip", "right_shoulder", "left_shoulder"]
    assert [sk.JOINT_NAMES[i] for i in sk.FOOT_LEFT + sk.FOOT_RIGHT] == [
        "left_ankle", "left_foot", "right_ankle", "right_foot"]
    dims = np.arange(sk.FEATURE_DIM)
    parts = [dims[s] for s in GROUPS.values()]
    assert np.array_equal(np.concatenate(parts), dims)
    assert [len(p) for p in parts] == [1, 2, 1, 63, 126, 66, 4]


def test_default_skeleton_matches_sample(joints):
    lengths = np.linalg.norm(joints[:, 1:] - joints[:, sk.PARENTS[1:]], axis=-1)
    assert np.abs(lengths - sk.default_bone_lengths()[1:]).max() < 1e-5
    off = sk.default_offsets()
    assert off.shape == (22, 3) and np.allclose(off[0], 0)
    assert np.allclose(np.linalg.norm(off, axis=-1), sk.default_bone_lengths())


# ----------------------------------------------------------------------------- features -> joints

def test_recover_from_ric_numpy(feats, joints):
    rec = sk.recover_from_ric(feats)
    assert rec.shape == (170, 22, 3) and rec.dtype == np.float32
    assert np.abs(rec - joints).max() <= EXACT_TOL


def test_recover_from_ric_torch(feats, joints):
    x = torch.from_numpy(feats)
    rec = sk.recover_from_ric(x)
    assert isinstance(rec, torch.Tensor) and rec.dtype == torch.float32
    assert np.abs(rec.numpy() - joints).max() <= EXACT_TOL
    batch = torch.stack([x, x.flip(0)])                      # (2, 170, 263)
    rec_b = sk.recover_from_ric_torch(batch)
    assert rec_b.shape == (2, 170, 22, 3)
    assert np.abs(rec_b[0].numpy() - joints).max() <= EXACT_TOL
    assert torch.allclose(rec_b[1], sk.recover_from_ric(x.flip(0)))
    rec64 = sk.recover_from_ric(x.double())
    assert rec64.dtype == torch.float64 and np.abs(rec64.numpy() - joints).max() <= EXACT_TOL


def test_recover_from_ric_torch_grad():
    x = torch.zeros(1, 8, 263, requires_grad=True)
    sk.recover_from_ric(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_recover_from_ric_cuda(feats, joints):
    rec = sk.recover_from_ric(torch.from_numpy(feats).cuda()[None])
    assert rec.is_cuda and np.abs(rec[0].cpu().numpy() - joints).max() <= 1e-4


def test_rot6d_dims_give_joints_by_fk(feats, joints):
    """The 6D dims are bone directions: FK on the target skeleton rebuilds new_joints."""
    assert np.abs(sk.recover_from_rot(feats) - joints).max() <= EXACT_TOL


# ----------------------------------------------------------------------------- joints -> features

def test_extract_features_roundtrip(feats):
    rec = sk.recover_from_ric(feats)
    out = sk.extract_features(rec)
    assert out.shape == (169, 263) and out.dtype == np.float32
    ref = feats[:169]
    # Row t uses the facing of frames t and t+1, smoothed over +-80 frames; the original clip
    # had frame 170, which we cannot recover, so rows t + 1 + 80 >= 170 see our padding instead.
    first_tail = 170 - 1 - SMOOTH_RADIUS                      # = 89
    for name, sl in GROUPS.items():
        err = np.abs(out[:, sl].astype(np.float64) - ref[:, sl]).max(-1)
        assert err[:first_tail].max() <= EXACT_TOL, name
        assert err[first_tail:].max() <= TAIL_TOL[name] + 1e-7, name


def test_extract_features_exact_with_rebuilt_last_frame(feats):
    """Rebuild the lost frame 170 from the last velocity row: then every row matches."""
    f64 = feats.astype(np.float64)
    rec = sk.recover_from_ric(f64)
    r_rot, _ = sk.recover_root_rot_pos(f64)
    vel = f64[-1, sk.LOCAL_VEL].reshape(22, 3)
    last = rec[-1] + sk.qrot(sk.qinv(r_rot[-1]), vel)
    out = sk.extract_features(np.concatenate([rec, last[None]]))
    assert out.shape == (170, 263)
    for name, sl in GROUPS.items():
        assert np.abs(out[:, sl] - feats[:, sl]).max() <= EXACT_TOL, name


def test_features_then_recover_is_identity(joints):
    """Any canonical clip: recover_from_ric(extract_features(j)) == j[:-1]."""
    out = sk.recover_from_ric(sk.extract_features(joints.astype(np.float64)))
    assert np.abs(out - joints[:-1]).max() <= EXACT_TOL


def test_turning_clip_roundtrip(joints):
    """A full turn crosses 180 degrees of facing: the default is HumanML3D's process_file (one row's root
    angular velocity negated there); the exact round trip needs continuous_root=True."""
    pose = joints[0].astype(np.float64) - joints[0, 0] * [1, 0, 1]
    ang = np.linspace(0, 2 * np.pi, 120)
    clip = np.stack([sk.qrot(sk.y_rotation_quat(a), pose) + [np.sin(a), 0, np.cos(a) - 1]
                     for a in ang])
    clip = sk.canonicalize(clip)
    good = sk.extract_features(clip, continuous_root=True)
    assert np.abs(sk.recover_from_ric(good.astype(np.float64)) - clip[:-1]).max() <= EXACT_TOL
    raw = sk.extract_features(clip)                           # the default
    diff = np.nonzero(np.abs(raw - good).max(-1) > 0)[0]
    assert len(diff) == 1 and raw[diff[0], 0] == -good[diff[0], 0]
    # HumanML3D's process_file: r_velocity = arcsin(y part of qmul(r_rot[1:], qinv(r_rot[:-1]))), no sign fix
    r_rot = sk.inverse_kinematics(clip, smooth_forward=True)[:, 0]
    hml = np.arcsin(sk.qmul(r_rot[1:], sk.qinv(r_rot[:-1]))[:, 2])
    assert np.allclose(raw[:, 0], hml, atol=1e-6) and not np.allclose(good[:, 0], hml, atol=1e-3)
    assert np.abs(sk.recover_from_ric(raw.astype(np.float64)) - clip[:-1]).max() > 1e-3  # its kink


# ----------------------------------------------------------------------------- FK / IK

@pytest.mark.parametrize("smooth", [True, False])
def test_fk_inverts_ik_on_sample(joints, smooth):
    j = joints.astype(np.float64)
    q = sk.inverse_kinematics(j, smooth_forward=smooth)
    assert q.shape == (170, 22, 4)
    assert np.allclose(np.linalg.norm(q, axis=-1), 1.0)
    assert np.allclose(q[0, 0], [1, 0, 0, 0])               # frame 0 root is the identity
    assert np.allclose(q[:, 0, [1, 3]], 0)                  # root rotates about y only
    rec = sk.forward_kinematics(q, j[:, 0], sk.offsets_from_joints(j[0]))
    assert np.abs(rec - j).max() <= EXACT_TOL


def test_fk_ik_random_pose():
    rng = np.random.default_rng(0)
    q = rand_quats(rng, 5 * 22).reshape(5, 22, 4)
    root = rng.normal(size=(5, 3))
    j = sk.forward_kinematics(q, root)                       # default offsets
    assert np.allclose(np.linalg.norm(j[:, 1:] - j[:, sk.PARENTS[1:]], axis=-1),
                       sk.default_bone_lengths()[1:])
    back = sk.forward_kinematics(sk.inverse_kinematics(j, smooth_forward=False), root)
    assert np.abs(back - j).max() < 1e-10


def test_fk_chain_semantics():
    """Chains starting at joint 9 compose from the root, not from the spine's rotation."""
    q = np.tile([1.0, 0, 0, 0], (1, 22, 1))
    q[0, 3] = sk.y_rotation_quat(np.pi / 2)                  # turn spine1 (chain 0-3-6-9-...)
    j = sk.forward_kinematics(q, np.zeros((1, 3)))[0]
    rest = sk.forward_kinematics(np.tile([1.0, 0, 0, 0], (1, 22, 1)), np.zeros((1, 3)))[0]
    assert np.allclose(j[[14, 17, 19, 21, 13, 16, 18, 20]] - j[9],
                       rest[[14, 17, 19, 21, 13, 16, 18, 20]] - rest[9])


# ----------------------------------------------------------------------------- quaternions vs scipy

def test_quaternion_ops_match_scipy():
    rng = np.random.default_rng(1)
    q, r = rand_quats(rng, 64), rand_quats(rng, 64)
    v = rng.normal(size=(64, 3))
    Rq, Rr = Rotation.from_quat(xyzw(q)), Rotation.from_quat(xyzw(r))
    assert same_rotation(sk.qmul(q, r), wxyz(Rq * Rr))
    assert same_rotation(sk.qinv(q), wxyz(Rq.inv()))
    assert np.allclose(sk.qrot(q, v), Rq.apply(v))
    assert np.allclose(sk.quat_to_matrix(q), Rq.as_matrix())
    assert same_rotation(sk.matrix_to_quat(Rq.as_matrix()), q)
    assert (sk.matrix_to_quat(Rq.as_matrix())[:, 0] >= 0).all()
    aa = rng.normal(size=(64, 3))
    assert same_rotation(sk.axis_angle_to_quat(aa), wxyz(Rotation.from_rotvec(aa)))
    assert np.allclose(sk.axis_angle_to_quat(np.zeros(3)), [1, 0, 0, 0])
    # torch inputs give the numpy answers
    tq, tr, tv = (torch.from_numpy(a) for a in (q, r, v))
    assert np.allclose(sk.qmul(tq, tr).numpy(), sk.qmul(q, r))
    assert np.allclose(sk.qrot(tq, tv).numpy(), sk.qrot(q, v))


def test_cont6d_matches_scipy_columns():
    rng = np.random.default_rng(2)
    q = rand_quats(rng, 64)
    m = Rotation.from_quat(xyzw(q)).as_matrix()
    d6 = sk.quat_to_cont6d(q)
    assert np.allclose(d6, np.concatenate([m[:, :, 0], m[:, :, 1]], -1))   # columns 0, 1
    assert np.allclose(sk.cont6d_to_matrix(d6), m)
    assert same_rotation(sk.cont6d_to_quat(d6), q)
    noisy = d6 * rng.uniform(0.5, 2.0, size=(64, 1)) + 1e-3 * rng.normal(size=d6.shape)
    mn = sk.cont6d_to_matrix(noisy)
    assert np.allclose(mn @ np.swapaxes(mn, -1, -2), np.eye(3))
    assert np.allclose(np.linalg.det(mn), 1.0)


def test_qbetween_is_shortest_arc():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(64, 3)), rng.normal(size=(64, 3)) * 3.0
    q = sk.qbetween(a, b)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    assert np.allclose(sk.qrot(q, unit(a)), unit(b))
    angle = np.arccos(np.clip((unit(a) * unit(b)).sum(-1), -1, 1))
    expected = Rotation.from_rotvec(unit(np.cross(a, b)) * angle[:, None])
    assert same_rotation(q, wxyz(expected))
    # degenerate cases: equal and opposite directions
    assert np.allclose(sk.qbetween(np.array([0, 1.0, 0]), np.array([0, 2.0, 0])), [1, 0, 0, 0])
    flip = sk.qbetween(np.array([0, -1.0, 0]), np.array([0, 1.0, 0]))
    assert np.allclose(sk.qrot(flip, np.array([0, -1.0, 0])), [0, 1, 0])


# ----------------------------------------------------------------------------- canonicalize / contacts

def facing(j0):
    r_hip, l_hip, sdr_r, sdr_l = sk.FACE_JOINTS
    across = j0[r_hip] - j0[l_hip] + j0[sdr_r] - j0[sdr_l]
    fwd = np.cross([0.0, 1.0, 0.0], across)
    return fwd / np.linalg.norm(fwd)


def test_canonicalize(joints):
    j = joints.astype(np.float64)
    assert np.abs(sk.canonicalize(j) - j).max() < 1e-6         # the sample is canonical already
    yaw = Rotation.from_euler("y", 2.3).as_matrix()
    moved = j @ yaw.T + np.array([1.5, 0.7, -3.0])
    out = sk.canonicalize(moved)
    assert out.dtype == np.float64
    assert abs(out[..., 1].min()) < 1e-12
    assert np.allclose(out[0, 0, [0, 2]], 0.0)
    assert np.allclose(facing(out[0]), [0, 0, 1])
    assert np.abs(out - j).max() < 1e-6
    assert sk.canonicalize(moved.astype(np.float32)).dtype == np.float32


def test_feet_contacts_hand_built():
    j = np.zeros((4, 22, 3))
    j[1, 7] = [0.04, 0.0, 0.0]        # left ankle moves 0.04: 0.0016 < 0.002 -> contact
    j[2:, 7] = [0.04, 0.05, 0.0]      # then 0.05 up: 0.0025 -> no contact; then still
    j[2, 11] = [0.0, 0.0, 0.1]        # right foot 0.1 -> no contact (frame 1->2)
    j[3, 11] = [0.0, 0.0, 0.1]        # still: contact
    expected = np.array([
        # 7, 10, 8, 11
        [1, 1, 1, 1],
        [0, 1, 1, 0],
        [1, 1, 1, 1],
    ], dtype=np.float32)
    out = sk.feet_contacts(j, 0.002)
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    assert np.array_equal(sk.feet_contacts(j, 0.001)[0], [0, 1, 1, 1])

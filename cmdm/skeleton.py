"""The 22-joint SMPL skeleton of HumanML3D and its 263-d motion features, both directions.

Facts follow the public HumanML3D repository (github.com/EricGuo5513/HumanML3D, MIT,
(c) 2022 Chuan Guo: `paramUtil.py`, `common/skeleton.py`, `common/quaternion.py`,
`motion_representation.ipynb`); the code here is our own.

Conventions
- y is up, a canonical body faces +z, so the body's left is +x.
- Quaternions are (w, x, y, z), Hamilton product, active rotation: qrot(q, v) = q v q^-1.
- Continuous 6D = the first two COLUMNS of the rotation matrix, (col0, col1).
- Rotations are per kinematic chain: every chain of KINEMATIC_CHAIN starts from the root
  quaternion (also the two arm chains that start at joint 9: they do not inherit the spine's
  rotation), and the quaternion stored at joint j rotates j's own offset (the bone parent->j),
  composed along the chain. IK therefore gives global bone rotation = qbetween(raw dir, bone).
- The root quaternion is the global facing rotation (about y). It is forced to identity at
  frame 0 (the clip was rotated to face +z there) and elsewhere comes from a facing direction
  smoothed over time with a gaussian (sigma 20 frames, mode 'nearest').
- IK quirk reproduced on purpose: HumanML3D's IK unpacks (r_hip, l_hip, ...) into swapped names,
  so its "across" vector is (l_hip - r_hip) + (r_shoulder - l_shoulder), whereas the initial
  canonicalisation uses (r_hip - l_hip) + (r_shoulder - l_shoulder). The hip term (0.12 m)
  only partly cancels the shoulder term (0.38 m), so both still point to the body's right; the
  real sample's features only match with the quirk (without it: errors 0.04-0.6).
- Because frame 0's root is forced to identity, feature row 0's root angular velocity is the
  jump from identity to the smoothed facing of frame 1 (0.106 rad in the sample).

Feature layout (T frames of joints -> T-1 feature rows; row t uses frames t and t+1):
  [0]        root angular velocity about y: arcsin of the y part of r_rot[t+1] r_rot[t]^-1
             (a half-angle, because recover_root_rot_pos builds [cos a, 0, sin a, 0]);
             as HumanML3D, the delta as it comes; see extract_features(continuous_root)
  [1:3]      root linear velocity xz, rotated into the root frame of t+1
  [3]        root height at t
  [4:67]     ric: joints 1..21 minus root xz, rotated by r_rot[t]
  [67:193]   6D local rotations of joints 1..21 at t
  [193:259]  velocities of all 22 joints (x[t+1] - x[t]) rotated by r_rot[t]
  [259:263]  foot contacts (joints 7, 10, 8, 11): squared displacement < threshold

Reproduction of the real sample 012314 (tests/test_skeleton.py measures these):
- recover_from_ric(new_joint_vecs) == new_joints to 2.4e-7 (numpy), bit-exact (torch float32).
- extract_features(recover_from_ric(x)) == x[:169] on ALL dims, rotations included, to 2e-6
  (6D) / 3e-7 (others) for rows 0..88. Rows 89..168 deviate (up to 7e-3 ric, 1.3e-2 6D,
  4e-4 velocities, 3e-4 root; root height and contacts stay exact): HumanML3D smoothed the
  facing over the original clip, which had one more frame (171) than the features recover
  (170); the gaussian reaches 80 frames (4 sigma), and with 'nearest' padding our last frame
  stands in for the lost one. Rebuilding that frame from the last velocity row (joints[-1] +
  r_rot[-1]^-1 * vel[-1]) makes all 170 rows match to 2e-6.
- IK only uses bone directions, so the 6D dims do not depend on bone lengths; FK of the
  sample's 6D dims with default_offsets() gives new_joints back to 2e-6.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

# ----------------------------------------------------------------------------- skeleton

NUM_JOINTS = 22
JOINT_NAMES = [
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
]
# HumanML3D's t2m_kinematic_chain: right leg, left leg, spine+head, right arm, left arm.
KINEMATIC_CHAIN = [
    [0, 2, 5, 8, 11],
    [0, 1, 4, 7, 10],
    [0, 3, 6, 9, 12, 15],
    [9, 14, 17, 19, 21],
    [9, 13, 16, 18, 20],
]
PARENTS = [-1] * NUM_JOINTS
for _chain in KINEMATIC_CHAIN:
    for _p, _c in zip(_chain[:-1], _chain[1:]):
        PARENTS[_c] = _p
del _chain, _p, _c

# HumanML3D's t2m_raw_offsets: the rest direction of each bone (parent -> joint).
RAW_OFFSETS = np.array([
    [0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, -1, 0], [0, 1, 0],
    [0, -1, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 1, 0], [1, 0, 0],
    [-1, 0, 0], [0, 0, 1], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0], [0, -1, 0],
    [0, -1, 0],
], dtype=np.float64)

FOOT_LEFT = [7, 10]    # left ankle, left foot
FOOT_RIGHT = [8, 11]   # right ankle, right foot
FACE_JOINTS = [2, 1, 17, 16]  # r_hip, l_hip, sdr_r, sdr_l

# Bone lengths (metres) of HumanML3D's target skeleton (subject 000021), which every clip is
# retargeted to. Measured as |joint - parent| at frame 0 of tests/data/humanml3d_sample/
# new_joints/012314.npy (constant over its frames to < 1e-5); index = child joint, root = 0.
_BONE_LENGTHS = np.array([
    0.0, 0.103074, 0.109883, 0.131568, 0.393623, 0.390188, 0.143190, 0.432433, 0.425643,
    0.057365, 0.143382, 0.149419, 0.219360, 0.137487, 0.143383, 0.103039, 0.131614,
    0.122984, 0.256840, 0.263092, 0.266012, 0.269876,
])

# ----------------------------------------------------------------------------- features

FEATURE_DIM = 263
ROOT_ROT_VEL = slice(0, 1)
ROOT_LIN_VEL = slice(1, 3)
ROOT_Y = slice(3, 4)
RIC = slice(4, 67)
ROT6D = slice(67, 193)
LOCAL_VEL = slice(193, 259)
FOOT_CONTACT = slice(259, 263)

FACING_SIGMA = 20.0  # frames; gaussian smoothing of the facing direction in IK


def default_bone_lengths() -> np.ndarray:
    """(22,) bone length of parent->joint in metres for HumanML3D's target skeleton."""
    return _BONE_LENGTHS.copy()


def default_offsets() -> np.ndarray:
    """(22, 3) rest offsets parent->joint: raw directions scaled by the target bone lengths."""
    return RAW_OFFSETS * _BONE_LENGTHS[:, None]


def offsets_from_joints(joints: np.ndarray) -> np.ndarray:
    """(22, 3) rest offsets whose lengths are the bones of one pose (22, 3)."""
    joints = np.asarray(joints, dtype=np.float64)
    lengths = np.zeros(NUM_JOINTS)
    for j in range(1, NUM_JOINTS):
        lengths[j] = np.linalg.norm(joints[j] - joints[PARENTS[j]])
    return RAW_OFFSETS * lengths[:, None]


# ----------------------------------------------------------------------------- quaternions
# qmul / qinv / qrot take numpy arrays or torch tensors (the torch recover_from_ric uses them);
# everything else is numpy float64.

def _xp(x):
    return torch if isinstance(x, torch.Tensor) else np


def _cross(a, b):
    """Cross product of (..., 3) by components, so numpy and torch broadcast alike."""
    ax, ay, az = a[..., 0], a[..., 1], a[..., 2]
    bx, by, bz = b[..., 0], b[..., 1], b[..., 2]
    return _xp(a).stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], -1)


def qmul(q, r):
    """Hamilton product q * r of (..., 4) quaternions (broadcasting)."""
    w1, x1, y1, z1 = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    w2, x2, y2, z2 = r[..., 0], r[..., 1], r[..., 2], r[..., 3]
    return _xp(q).stack([
        w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
        w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
        w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
        w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
    ], -1)


def qinv(q):
    """Inverse (conjugate) of unit quaternions (..., 4)."""
    return _xp(q).stack([q[..., 0], -q[..., 1], -q[..., 2], -q[..., 3]], -1)


def qrot(q, v):
    """Rotate vectors v (..., 3) by unit quaternions q (..., 4) (broadcasting)."""
    u, w = q[..., 1:], q[..., :1]
    uv = _cross(u, v)
    return v + 2.0 * (w * uv + _cross(u, uv))


def qnormalize(q: np.ndarray) -> np.ndarray:
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def qbetween(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Shortest-arc unit quaternion rotating direction a onto direction b (..., 3) -> (..., 4).

    w = |a||b| + a.b, xyz = a x b, normalised; for opposite vectors (w, xyz ~ 0) we rotate
    half a turn about an axis orthogonal to a.
    """
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    w = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + (a * b).sum(-1)
    q = np.concatenate([w[..., None], np.cross(a, b)], -1)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    bad = norm[..., 0] <= 1e-12 * np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    if np.any(bad):
        ab = a[bad]
        axis = np.cross(ab, [1.0, 0.0, 0.0])
        small = np.linalg.norm(axis, axis=-1) < 1e-6 * np.linalg.norm(ab, axis=-1)
        axis[small] = np.cross(ab[small], [0.0, 0.0, 1.0])
        q[bad] = np.concatenate([np.zeros((len(ab), 1)), axis], -1)
        norm = np.linalg.norm(q, axis=-1, keepdims=True)
    return q / norm


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) -> rotation matrices (..., 3, 3)."""
    q = qnormalize(np.asarray(q, np.float64))
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    m = np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1)
    return m.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4) with w >= 0.

    Four candidate solutions, each pivoting on one component; the largest pivot is the
    numerically safe one (Shepperd's method).
    """
    m = np.asarray(m, np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    pivots = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22,
                       1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)       # 4w^2, 4x^2, ...
    cands = np.stack([
        np.stack([pivots[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        np.stack([m21 - m12, pivots[..., 1], m10 + m01, m02 + m20], -1),
        np.stack([m02 - m20, m10 + m01, pivots[..., 2], m21 + m12], -1),
        np.stack([m10 - m01, m02 + m20, m21 + m12, pivots[..., 3]], -1),
    ], -2)                                                                  # (..., 4, 4)
    best = np.argmax(pivots, axis=-1)[..., None, None]
    q = np.take_along_axis(cands, np.broadcast_to(best, best.shape[:-2] + (1, 4)), -2)[..., 0, :]
    q = qnormalize(q)
    return np.where(q[..., :1] < 0, -q, q)


def quat_to_cont6d(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) -> continuous 6D (..., 6) = [matrix column 0, matrix column 1]."""
    m = quat_to_matrix(q)
    return np.concatenate([m[..., :, 0], m[..., :, 1]], -1)


def cont6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    """Continuous 6D (..., 6) -> rotation matrices (..., 3, 3) by Gram-Schmidt on the columns."""
    d6 = np.asarray(d6, np.float64)
    x = d6[..., 0:3] / np.linalg.norm(d6[..., 0:3], axis=-1, keepdims=True)
    z = np.cross(x, d6[..., 3:6])
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    y = np.cross(z, x)
    return np.stack([x, y, z], -1)


def cont6d_to_quat(d6: np.ndarray) -> np.ndarray:
    return matrix_to_quat(cont6d_to_matrix(d6))


def axis_angle_to_quat(aa: np.ndarray) -> np.ndarray:
    """Axis-angle vectors (..., 3) (angle = norm, radians) -> unit quaternions (..., 4)."""
    aa = np.asarray(aa, np.float64)
    angle = np.linalg.norm(aa, axis=-1, keepdims=True)
    # sin(angle/2)/angle written with sinc so that angle -> 0 is exact.
    xyz = aa * 0.5 * np.sinc(angle / (2 * np.pi))
    return np.concatenate([np.cos(angle / 2), xyz], -1)


def y_rotation_quat(angle) -> np.ndarray:
    """Quaternion of a rotation by `angle` radians about +y."""
    angle = np.asarray(angle, np.float64)
    zero = np.zeros_like(angle)
    return np.stack([np.cos(angle / 2), zero, np.sin(angle / 2), zero], -1)


# ----------------------------------------------------------------------------- kinematics

def _facing(across: np.ndarray, smooth: bool) -> np.ndarray:
    """Unit horizontal facing direction (T, 3) from an across-the-body vector (T, 3).

    forward = up x across, with across normalised in 3D and forward normalised only after the
    (optional) temporal smoothing, exactly in HumanML3D's order.
    """
    across = across / np.linalg.norm(across, axis=-1, keepdims=True)
    forward = np.cross(np.array([0.0, 1.0, 0.0]), across)
    if smooth:
        forward = gaussian_filter1d(forward, FACING_SIGMA, axis=0, mode="nearest")
    return forward / np.linalg.norm(forward, axis=-1, keepdims=True)


def forward_kinematics(local_quats: np.ndarray, root_pos: np.ndarray,
                       offsets: np.ndarray | None = None) -> np.ndarray:
    """Joint positions (..., T, 22, 3) from per-chain local rotations (..., T, 22, 4).

    Each chain starts from the root quaternion; walking down it, the accumulated rotation
    times the joint's own quaternion rotates that joint's rest offset (parent -> joint).
    """
    q = np.asarray(local_quats, np.float64)
    offsets = default_offsets() if offsets is None else np.asarray(offsets, np.float64)
    joints = np.zeros(q.shape[:-1] + (3,))
    joints[..., 0, :] = root_pos
    for chain in KINEMATIC_CHAIN:
        rot = q[..., 0, :]
        for parent, child in zip(chain[:-1], chain[1:]):
            rot = qmul(rot, q[..., child, :])
            joints[..., child, :] = joints[..., parent, :] + qrot(rot, offsets[..., child, :])
    return joints


def inverse_kinematics(joints: np.ndarray, offsets: np.ndarray | None = None,
                       smooth_forward: bool = True) -> np.ndarray:
    """Per-chain local rotations (T, 22, 4) that FK maps back onto the bone directions of joints.

    Root: rotation taking the (smoothed) facing direction to +z, identity at frame 0.
    Others: global bone rotation = qbetween(rest direction, actual bone direction), expressed
    relative to the previous rotation along the chain. Only the offset directions matter, so
    raw or scaled offsets give the same result. The bone twist is unobservable and set to the
    shortest arc.
    """
    joints = np.asarray(joints, np.float64)
    rest = RAW_OFFSETS if offsets is None else np.asarray(offsets, np.float64)
    r_hip, l_hip, sdr_r, sdr_l = FACE_JOINTS
    # HumanML3D's IK quirk (see module docstring): hip term is left - right here.
    across = (joints[:, l_hip] - joints[:, r_hip]) + (joints[:, sdr_r] - joints[:, sdr_l])
    forward = _facing(across, smooth_forward)
    root = qbetween(forward, np.array([0.0, 0.0, 1.0]))
    root[0] = [1.0, 0.0, 0.0, 0.0]

    quats = np.zeros(joints.shape[:-1] + (4,))
    quats[:, 0] = root
    for chain in KINEMATIC_CHAIN:
        rot = root
        for parent, child in zip(chain[:-1], chain[1:]):
            bone = joints[:, child] - joints[:, parent]
            glob = qbetween(np.broadcast_to(rest[child], bone.shape), bone)
            local = qmul(qinv(rot), glob)
            quats[:, child] = local
            rot = qmul(rot, local)
    return quats


def canonicalize(joints: np.ndarray) -> np.ndarray:
    """HumanML3D's pre-feature normalisation of a clip (T, 22, 3) on the target skeleton.

    Put on the floor (min y over the clip = 0), move the frame-0 root xz to the origin, and
    rotate about y so that frame 0 faces +z (across = (r_hip - l_hip) + (r_sdr - l_sdr)).
    """
    joints = np.asarray(joints)
    dtype = joints.dtype if np.issubdtype(joints.dtype, np.floating) else np.float64
    pos = joints.astype(np.float64)
    pos[..., 1] -= pos[..., 1].min()
    pos[..., 0] -= pos[0, 0, 0]
    pos[..., 2] -= pos[0, 0, 2]
    r_hip, l_hip, sdr_r, sdr_l = FACE_JOINTS
    first = pos[:1]
    across = (first[:, r_hip] - first[:, l_hip]) + (first[:, sdr_r] - first[:, sdr_l])
    forward = _facing(across, smooth=False)[0]
    pos = qrot(qbetween(forward, np.array([0.0, 0.0, 1.0])), pos)
    return pos.astype(dtype)


def feet_contacts(joints: np.ndarray, threshold: float = 0.002) -> np.ndarray:
    """(T-1, 4) float32 contacts for joints [7, 10, 8, 11]: squared step length < threshold."""
    joints = np.asarray(joints, np.float64)
    feet = FOOT_LEFT + FOOT_RIGHT
    step2 = ((joints[1:, feet] - joints[:-1, feet]) ** 2).sum(-1)
    return (step2 < threshold).astype(np.float32)


# ----------------------------------------------------------------------------- features

def extract_features(joints: np.ndarray, local_quats: np.ndarray | None = None,
                     feet_threshold: float = 0.002, continuous_root: bool = False) -> np.ndarray:
    """Canonical joints (T, 22, 3) -> HumanML3D features (T-1, 263) float32.

    `joints` must already be on the target skeleton and canonicalised (see canonicalize);
    this is HumanML3D's process_file after that preprocessing. Without local_quats the
    rotations come from inverse_kinematics(smooth_forward=True), whose root quaternion is the
    facing rotation used throughout.

    continuous_root=False (default) is HumanML3D's process_file: the arcsin of the y part of
    r_rot[t+1] r_rot[t]^-1 as it comes. When the facing crosses 180 degrees from frame 0,
    qbetween's w >= 0 flips the quaternion's sign and that one row gets the negated angular
    velocity, so the clip recovered from it kinks there. continuous_root=True takes the delta
    with w >= 0 first, which removes the kink (recover_from_ric then inverts this exactly); the
    two agree everywhere else, hence on the real sample.
    """
    joints = np.asarray(joints, np.float64)
    T = joints.shape[0]
    if local_quats is None:
        local_quats = inverse_kinematics(joints, smooth_forward=True)
    local_quats = np.asarray(local_quats, np.float64)
    r_rot = local_quats[:, 0]

    d_rot = qmul(r_rot[1:], qinv(r_rot[:-1]))
    if continuous_root:
        d_rot = np.where(d_rot[:, :1] < 0, -d_rot, d_rot)
    root_rot_vel = np.arcsin(np.clip(d_rot[:, 2:3], -1.0, 1.0))
    root_lin_vel = qrot(r_rot[1:], joints[1:, 0] - joints[:-1, 0])[:, [0, 2]]
    root_y = joints[:-1, 0, 1:2]

    local = joints.copy()
    local[..., 0] -= joints[:, :1, 0]
    local[..., 2] -= joints[:, :1, 2]
    ric = qrot(r_rot[:, None], local)[:-1, 1:].reshape(T - 1, -1)
    rot6d = quat_to_cont6d(local_quats[:-1, 1:]).reshape(T - 1, -1)
    vel = qrot(r_rot[:-1, None], joints[1:] - joints[:-1]).reshape(T - 1, -1)
    contacts = feet_contacts(joints, feet_threshold)

    feats = np.concatenate([root_rot_vel, root_lin_vel, root_y, ric, rot6d, vel, contacts], -1)
    return feats.astype(np.float32)


def recover_root_rot_pos(features):
    """Root rotation (..., T, 4) and position (..., T, 3) integrated from features (..., T, 263).

    The half-angle integrates from frame 1 (frame 0 faces +z): a[t] = sum_{s<t} vel[s], the
    quaternion is [cos a, 0, sin a, 0]; the xz velocity of row t-1 (in the root frame of t)
    is rotated back to the world and summed; y is the stored root height. Works on numpy
    (float64 inside) and torch (input dtype/device) alike.
    """
    xp = _xp(features)
    f = features
    zero = xp.zeros_like(f[..., :1, 0])
    ang = xp.concatenate([zero, xp.cumsum(f[..., :-1, 0], -1)], -1)
    zeros = xp.zeros_like(ang)
    r_rot = xp.stack([xp.cos(ang), zeros, xp.sin(ang), zeros], -1)
    vx = xp.concatenate([zero, f[..., :-1, 1]], -1)
    vz = xp.concatenate([zero, f[..., :-1, 2]], -1)
    vel = qrot(qinv(r_rot), xp.stack([vx, zeros, vz], -1))
    pos = xp.cumsum(vel, -2)
    r_pos = xp.stack([pos[..., 0], f[..., 3], pos[..., 2]], -1)
    return r_rot, r_pos


def recover_from_ric(features):
    """Joint positions (..., T, 22, 3) from features (..., T, 263), numpy or torch.

    Un-rotates the root-relative ric positions by the integrated root rotation and adds the
    root xz. numpy input is computed in float64 and returned as float32 (HumanML3D's dtype)
    unless it was float64;
    torch input stays in its dtype and device and is differentiable.
    """
    is_torch = isinstance(features, torch.Tensor)
    if not is_torch:
        features = np.asarray(features)
        out_dtype = features.dtype if features.dtype == np.float64 else np.float32
    f = features if is_torch else features.astype(np.float64)
    xp = _xp(f)
    r_rot, r_pos = recover_root_rot_pos(f)
    ric = f[..., RIC].reshape(f.shape[:-1] + (NUM_JOINTS - 1, 3))
    ric = qrot(qinv(r_rot)[..., None, :], ric)
    shift = xp.stack([r_pos[..., 0], xp.zeros_like(r_pos[..., 0]), r_pos[..., 2]], -1)
    joints = xp.concatenate([r_pos[..., None, :], ric + shift[..., None, :]], -2)
    return joints if is_torch else joints.astype(out_dtype)


def recover_from_rot(features: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """Joint positions (T, 22, 3) by FK of the 6D rotation dims (numpy, float64).

    The root quaternion and position come from recover_root_rot_pos; bone lengths from
    `offsets` (default: the target skeleton). Agrees with recover_from_ric on real data.
    """
    f = np.asarray(features, np.float64)
    r_rot, r_pos = recover_root_rot_pos(f)
    local = cont6d_to_quat(f[..., ROT6D].reshape(f.shape[:-1] + (NUM_JOINTS - 1, 6)))
    quats = np.concatenate([r_rot[..., None, :], local], -2)
    return forward_kinematics(quats, r_pos, offsets)


def recover_from_ric_torch(features: torch.Tensor) -> torch.Tensor:
    """Torch entry point of recover_from_ric (batched, any device)."""
    if not isinstance(features, torch.Tensor):
        raise TypeError("recover_from_ric_torch expects a torch.Tensor")
    return recover_from_ric(features)

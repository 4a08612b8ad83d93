"""Rotations and headings: the small quaternion vocabulary every pose of the generator is built from."""
from __future__ import annotations

import numpy as np

from cmdm import skeleton as sk

# Quaternions are (w, x, y, z) as in cmdm.skeleton. Body axes: x = the body's left, y = up,
# z = forward. Angle signs used below: rx(+a) tips an upward bone forward and a downward bone
# backward; rz(+a) swings a downward bone to the left; ry(+a) turns the body to the left.


def _axis_quat(axis: int, angle) -> np.ndarray:
    angle = np.asarray(angle, np.float64)
    q = np.zeros(angle.shape + (4,))
    q[..., 0] = np.cos(angle / 2)
    q[..., 1 + axis] = np.sin(angle / 2)
    return q


def rx(a):
    return _axis_quat(0, a)


def ry(a):
    return _axis_quat(1, a)


def rz(a):
    return _axis_quat(2, a)


def qchain(*qs):
    """Product q1 * q2 * ... (the rightmost rotation acts first)."""
    out = qs[0]
    for q in qs[1:]:
        out = sk.qmul(out, q)
    return out


def heading_vec(yaw):
    """Unit forward (x, z) for a heading angle; yaw 0 faces +z, positive turns left (+x)."""
    return np.stack([np.sin(yaw), np.cos(yaw)], -1)


def left_vec(yaw):
    """Unit (x, z) pointing to the body's left for a heading angle."""
    return np.stack([np.cos(yaw), -np.sin(yaw)], -1)


def facing_yaw(joints: np.ndarray) -> np.ndarray:
    """Heading (T,) of posed joints from hips and shoulders, the way HumanML3D measures facing."""
    across = (joints[..., 1, :] - joints[..., 2, :]) + (joints[..., 16, :] - joints[..., 17, :])
    return np.arctan2(-across[..., 2], across[..., 0])     # across = left_vec(yaw)


def minjerk(u):
    """Smooth 0 -> 1 ramp with zero velocity and acceleration at both ends."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * u * (10 - 15 * u + 6 * u * u)

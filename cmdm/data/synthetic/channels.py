"""Animation channels: a `Segment` holds one action's per-frame pelvis path and heading, upper-body angles
and footprints, keyed with smooth curves (min-jerk, monotone cubics) from the pose the last action ended in."""
from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from cmdm.data.synthetic.body import CH, LEFT, TOE, Body
from cmdm.data.synthetic.rotations import minjerk

FPS = 20          # HumanML3D's frame rate: a channel holds one value per frame
GRAVITY = 9.81    # m/s^2: what a body in the air (a jump) falls with

REACH = 0.99   # a planted leg stretches to at most this fraction of its full length


def reach_limit(body: Body, root, yaw, pitch, ankle, side) -> np.ndarray:
    """Highest pelvis y for which the ankle target is within REACH of the hip (vectorised)."""
    root0 = np.array(root, np.float64, copy=True)
    root0[..., 1] = 0.0
    hip = body.hip_world(root0, yaw, pitch, side)
    h2 = (hip[..., 0] - ankle[..., 0]) ** 2 + (hip[..., 2] - ankle[..., 2]) ** 2
    return ankle[..., 1] - hip[..., 1] + np.sqrt(np.maximum((REACH * body.leg[side]) ** 2 - h2, 0.0))


class Segment:
    """Per-frame channels of one action; frame i is at time t = i + 1 (t = 0 is the last pose).

    Made by `Builder.segment` (actions.py), whose state (the last pose) it starts from."""

    def __init__(self, n: int, b):
        self.n, self.body = n, b.body
        self.t = np.arange(1, n + 1, dtype=np.float64)
        self.start_upper = b.upper.copy()
        self.start_root = b.root.copy()
        self.start_yaw = b.yaw
        self.root = np.repeat(b.root[None], n, 0)            # (n, 3) pelvis; y = desired height
        self.yaw = np.full(n, b.yaw)                         # (n,) body heading
        self.upper = np.repeat(b.upper[None], n, 0)          # (n, len(UPPER)) angles
        self.foot_pos = np.repeat(b.foot_pos[None], n, 0)    # (n, 2, 3) ankle targets
        self.foot_yaw = np.repeat(b.foot_yaw[None], n, 0)    # (n, 2)
        self.foot_pitch = np.zeros((n, 2))                   # (n, 2) positive = toes down
        self.planted = np.ones((n, 2), bool)                 # (n, 2) foot on the ground

    def ease(self, keys: dict):
        """Keyframe upper-body channels {name: [(t, value), ...]}: min-jerk from the last pose."""
        for name, ks in keys.items():
            c = CH[name]
            times = [0.0] + [float(t) for t, _ in ks]
            values = [self.start_upper[c]] + [float(v) for _, v in ks]
            self.upper[:, c] = _ease(times, values, self.t)

    def path(self, keys, yaw_keys=None):
        """Pelvis xz through [(t, (x, z))] and heading through [(t, yaw)]: monotone cubics."""
        times = [0.0] + [float(t) for t, _ in keys]
        xz = [self.start_root[[0, 2]]] + [np.asarray(v, np.float64) for _, v in keys]
        self.root[:, [0, 2]] = _pchip(times, np.array(xz), self.t)
        if yaw_keys:
            times = [0.0] + [float(t) for t, _ in yaw_keys]
            yaws = [self.start_yaw] + [float(v) for _, v in yaw_keys]
            self.yaw[:] = _pchip(times, np.array(yaws), self.t)

    def height(self, keys):
        """Desired pelvis height through [(t, y)] (min-jerk); the planted legs cap it later."""
        times = [0.0] + [float(t) for t, _ in keys]
        self.root[:, 1] = _ease(times, [self.start_root[1]] + [float(v) for _, v in keys], self.t)

    def swing(self, side, t0, t1, target, target_yaw, clearance, toe=0.25, lead=0.25,
              lift_first=0.0):
        """Carry one foot from its footprint to `target` (ankle xyz) between times t0 and t1.

        The foot lifts by a sine bump of `clearance` and pitches its toes down at push-off
        and up at heel strike; it only starts travelling after `lead` of the swing (so the
        toe does not drag), with a min-jerk profile, and is planted from t1 on. lift_first > 0
        reaches the target height in that fraction of the swing (stepping up onto a box)."""
        i0 = int(np.clip(np.floor(t0) - 1, 0, self.n - 1))
        start, start_yaw = self.foot_pos[i0, side].copy(), self.foot_yaw[i0, side]
        target = np.asarray(target, np.float64)
        u = (self.t - t0) / (t1 - t0)
        during, after = (u > 0) & (u < 1), u >= 1
        ud = u[during]
        s = minjerk((ud - lead) / (1 - lead))
        pos = start + (target - start) * s[:, None]
        rise = minjerk(ud / lift_first) if lift_first > 0 else s
        pos[:, 1] = start[1] + (target[1] - start[1]) * rise + clearance * np.sin(np.pi * ud)
        pitch = toe * np.sin(2 * np.pi * ud)
        ground = min(start[1], target[1]) - self.body.ankle_h
        self.foot_pos[during, side] = self._toe_above(pos, pitch, ground, side)
        self.foot_pitch[during, side] = pitch
        self.foot_yaw[during, side] = start_yaw + _wrap(target_yaw - start_yaw) * s
        self.planted[during, side] = False
        self.foot_pos[after, side] = target
        self.foot_yaw[after, side] = start_yaw + _wrap(target_yaw - start_yaw)

    def _toe_above(self, pos, pitch, ground, side):
        """Raise ankle targets where a pitched foot would put its toe joint below `ground`."""
        foot_len = self.body.lengths[TOE[side]]
        beta = np.arcsin(self.body.ankle_h / foot_len)          # flat foot: toe this far down
        pos = pos.copy()
        pos[:, 1] = np.maximum(pos[:, 1], ground + foot_len * np.sin(beta + pitch) + 0.01)
        return pos

    def foot_keys(self, side, keys, pitch_keys=()):
        """A free foot (kick) through [(t, ankle xyz)] keys; in the air between first and last."""
        i0 = int(np.clip(np.floor(keys[0][0]) - 1, 0, self.n - 1))
        start = self.foot_pos[i0, side].copy()
        times = [float(keys[0][0])] + [float(t) for t, _ in keys[1:]]
        pts = [start] + [np.asarray(v, np.float64) for _, v in keys[1:]]
        m = (self.t > times[0]) & (self.t < times[-1])
        pos = np.stack([_ease(times, [p[c] for p in pts], self.t[m]) for c in range(3)], -1)
        pitch = np.zeros(int(m.sum()))
        if pitch_keys:
            pt = [times[0]] + [float(t) for t, _ in pitch_keys]
            pitch = _ease(pt, [0.0] + [float(v) for _, v in pitch_keys], self.t[m])
        self.foot_pos[m, side] = self._toe_above(pos, pitch, start[1] - self.body.ankle_h, side)
        self.foot_pitch[m, side] = pitch
        self.foot_pos[self.t >= times[-1], side] = pts[-1]
        self.planted[m, side] = False


def _ease(times, values, t):
    """Piecewise min-jerk through (times, values) evaluated at t; constant beyond the ends."""
    times = np.asarray(times, np.float64)
    values = np.asarray(values, np.float64)
    out = np.full(np.shape(t), values[-1])
    out[t <= times[0]] = values[0]
    for i in range(len(times) - 1):
        m = (t > times[i]) & (t <= times[i + 1])
        u = (t[m] - times[i]) / max(times[i + 1] - times[i], 1e-9)
        out[m] = values[i] + (values[i + 1] - values[i]) * minjerk(u)
    return out


def _pchip(times, values, t):
    """Monotone cubic through keys (no overshoot between keys), constant beyond the ends."""
    times = np.asarray(times, np.float64)
    values = np.asarray(values, np.float64)
    keep = np.concatenate([[True], np.diff(times) > 1e-6])
    times, values = times[keep], values[keep]
    if len(times) == 1:
        return np.repeat(values[:1], len(t), 0)
    return PchipInterpolator(times, values, axis=0)(np.clip(t, times[0], times[-1]))


def _wrap(a):
    """Angle wrapped to [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def sgn(side):
    """+1 for the left side (+x), -1 for the right."""
    return 1.0 if side == LEFT else -1.0

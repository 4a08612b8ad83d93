"""A procedural text-motion-scene dataset in HumanML3D's layout, plus afford-motion contact maps.

Why: CMDM must train and be tuned on a laptop CPU without downloading HumanML3D. This module
makes a small stand-in with the same files, shapes and conventions, so every code path (reader,
normalisation, evaluator, contacts) runs unchanged on it. The data is generated, not recorded.

How a clip is made (top to bottom in this file):
  1. A `Body`: the HumanML3D skeleton with its bones scaled +-5 % and a slightly personal posture.
  2. A `Builder` strings 1-3 actions together (walk, run, jump, turn, sit, stand, wave, kick,
     squat, sidestep, raise arms, climb, clap, bow, punch, pick up). Each action writes keyframed
     animation channels: pelvis path and heading, spine/neck/arm angles, and footprints. Every
     action starts from the pose the previous one ended in, so transitions blend smoothly.
  3. `pose_clip` turns channels into joint rotations: upper body by composing local rotations,
     legs by a two-bone IK that puts each ankle on its footprint (so planted feet do not skate and
     stand exactly on the floor or on the step), and the pelvis height is the highest the planted
     legs reach. Rotations are converted to HumanML3D's per-chain quaternions and positions come
     from `skeleton.forward_kinematics` over the (scaled) default offsets: bone lengths are real.
  4. HumanML3D's pipeline: canonicalize -> extract_features (263-d) -> recover_from_ric.
  5. A scene placed from the final joints: a floor patch plus the furniture the actions used
     (chair, step box, table) as point clouds, and afford-motion's contact distances.
  6. Captions from templates with synonyms, tagged `word/POS` by a small built-in lexicon.

Layout written (HumanML3D + afford-motion): new_joint_vecs/, new_joints/, texts/, contacts/,
Mean.npy, Std.npy, train/val/test/all.txt, meta.json, and synthetic_manifest.json (written last: the
size and sha256 of every file; what lets the generator reuse or replace the folder, and nothing else).

    python -m cmdm.data.synthetic --out data/synthetic [--num 2000 --seed 0 --points 1024
                                                         --workers W --preview 6]
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import io
import json
import multiprocessing
import os
import re
import sys
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
from scipy.interpolate import PchipInterpolator
from scipy.ndimage import gaussian_filter1d
from tqdm import tqdm

from cmdm import skeleton as sk
from cmdm.data.humanml3d import DataError

GENERATOR_VERSION = "1.0"
FPS = 20
MIN_T, MAX_T = 40, 200          # HumanML3D keeps 40 <= T < 200 feature rows
GRAVITY = 9.81
LEFT, RIGHT = 0, 1
SIDE_NAMES = ("left", "right")

# ============================================================================= rotations
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


# ============================================================================= body

# Bone directions (parent -> joint) of a relaxed standing pose, from the SMPL template with the
# arms lowered. The skeleton's own rest directions (RAW_OFFSETS) are axis-aligned and would
# put the head in front of the neck and the arms along the collars.
_NEUTRAL_DIRS = np.array([
    [0, 0, 0],
    [0.61, -0.79, 0.0], [-0.61, -0.79, 0.0],      # pelvis -> hips
    [0.0, 1.0, -0.2],                              # spine1
    [0.0, -1.0, 0.0], [0.0, -1.0, 0.0],            # thighs (set by IK)
    [0.0, 1.0, 0.15],                              # spine2
    [0.0, -1.0, 0.0], [0.0, -1.0, 0.0],            # shanks (set by IK)
    [0.0, 1.0, 0.05],                              # spine3
    [0.0, -0.33, 0.94], [0.0, -0.33, 0.94],        # feet: toe joint ahead and below the ankle
    [0.0, 1.0, -0.15],                             # neck
    [0.45, 0.88, -0.1], [-0.45, 0.88, -0.1],       # collars
    [0.0, 0.85, 0.53],                             # head
    [0.97, 0.05, -0.1], [-0.97, 0.05, -0.1],       # collar -> shoulder
    [0.12, -1.0, -0.02], [-0.12, -1.0, -0.02],     # upper arms
    [0.03, -1.0, 0.15], [-0.03, -1.0, 0.15],       # forearms
], dtype=np.float64)
_NEUTRAL_DIRS[1:] /= np.linalg.norm(_NEUTRAL_DIRS[1:], axis=-1, keepdims=True)
_MIRROR_PAIRS = [(1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21)]
_HIP, _KNEE, _ANKLE, _TOE = (1, 2), (4, 5), (7, 8), (10, 11)
_COLLAR, _SHOULDER, _ELBOW, _WRIST = (13, 14), (16, 17), (18, 19), (20, 21)

# Upper-body animation channels (radians). Arm angles are written for the left arm and mirrored
# for the right one: flex raises the arm forward, abd sideways, twist turns it about its own
# axis (positive = outward, external rotation), hadd swings a raised arm towards the midline.
UPPER = ("pelvis_pitch", "spine_pitch", "spine_yaw", "spine_roll", "neck_pitch",
         "l_flex", "l_abd", "l_twist", "l_elbow", "l_hadd",
         "r_flex", "r_abd", "r_twist", "r_elbow", "r_hadd")
CH = {name: i for i, name in enumerate(UPPER)}


def arm(side: int, name: str) -> str:
    return ("l_", "r_")[side] + name


class Body:
    """One performer: scaled bone lengths, leg geometry and a personal neutral posture."""

    def __init__(self, rng: np.random.Generator):
        jitter = 1.0 + rng.uniform(-0.02, 0.02, sk.NUM_JOINTS)
        for l, r in _MIRROR_PAIRS:          # left and right limbs stay equally long
            jitter[r] = jitter[l]
        self.scale = 1.0 + rng.uniform(-0.05, 0.05)
        self.lengths = sk.default_bone_lengths() * self.scale * jitter
        self.offsets = sk.RAW_OFFSETS * self.lengths[:, None]
        self.bones = _NEUTRAL_DIRS * self.lengths[:, None]
        self.thigh = self.lengths[list(_KNEE)]
        self.shank = self.lengths[list(_ANKLE)]
        self.leg = self.thigh + self.shank
        # A flat foot has its toe joint on the ground and the ankle this much higher.
        self.ankle_h = -self.bones[_TOE[0], 1]
        self.half_width = abs(self.bones[_HIP[0], 0]) + rng.uniform(0.005, 0.035)
        # Neutral posture with a little personal noise: how this person stands.
        neutral = np.zeros(len(UPPER))
        neutral[CH["spine_pitch"]] = rng.uniform(-0.03, 0.12)
        neutral[CH["neck_pitch"]] = rng.uniform(-0.15, 0.1)
        for s in (LEFT, RIGHT):
            neutral[CH[arm(s, "flex")]] = rng.uniform(-0.05, 0.12)
            neutral[CH[arm(s, "abd")]] = rng.uniform(0.0, 0.15)
            neutral[CH[arm(s, "elbow")]] = rng.uniform(0.1, 0.35)
            neutral[CH[arm(s, "twist")]] = rng.uniform(-0.1, 0.1)
        self.neutral = neutral
        # Standing pelvis height: legs at 97 % of full reach (knees very slightly bent).
        hip = self.bones[_HIP[0]]
        dx = abs(hip[0]) - self.half_width
        self.stand_y = self.ankle_h - hip[1] + np.sqrt((0.97 * self.leg[0]) ** 2 - dx ** 2)

    def hip_world(self, root, yaw, pitch, side):
        """World position of a hip joint for pelvis position/heading/forward tilt (broadcasts)."""
        g0 = qchain(ry(yaw), rx(pitch))
        return root + sk.qrot(g0, np.broadcast_to(self.bones[_HIP[side]], np.shape(root)))


# ============================================================================= animation channels

REACH = 0.99   # a planted leg stretches to at most this fraction of its full length


def reach_limit(body: Body, root, yaw, pitch, ankle, side) -> np.ndarray:
    """Highest pelvis y for which the ankle target is within REACH of the hip (vectorised)."""
    root0 = np.array(root, np.float64, copy=True)
    root0[..., 1] = 0.0
    hip = body.hip_world(root0, yaw, pitch, side)
    h2 = (hip[..., 0] - ankle[..., 0]) ** 2 + (hip[..., 2] - ankle[..., 2]) ** 2
    return ankle[..., 1] - hip[..., 1] + np.sqrt(np.maximum((REACH * body.leg[side]) ** 2 - h2, 0.0))


class Segment:
    """Per-frame channels of one action; frame i is at time t = i + 1 (t = 0 is the last pose)."""

    def __init__(self, n: int, b: "Builder"):
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
        foot_len = self.body.lengths[_TOE[side]]
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


def _sgn(side):
    """+1 for the left side (+x), -1 for the right."""
    return 1.0 if side == LEFT else -1.0


# ============================================================================= actions

class Builder:
    """Strings actions together; between actions it holds the last pose (the state)."""

    def __init__(self, body: Body, rng: np.random.Generator):
        self.body, self.rng = body, rng
        hw, ah = body.half_width, body.ankle_h
        self.toe_out = rng.uniform(0.0, 0.15)
        self.root = np.array([0.0, body.stand_y, 0.0])
        self.yaw = 0.0
        self.upper = body.neutral.copy()
        self.foot_pos = np.array([[hw, ah, 0.0], [-hw, ah, 0.0]])
        self.foot_yaw = np.array([self.toe_out, -self.toe_out])
        self.seat = None                   # the chair while seated
        self.segments, self.actions, self.furniture = [], [], []
        self.frames = 0

    # ---------------------------------------------------------------- state helpers
    def segment(self, n) -> Segment:
        return Segment(int(np.ceil(n)), self)

    def push(self, seg: Segment, family=None, params=None):
        start = self.frames
        self.segments.append(seg)
        self.frames += seg.n
        self.root, self.yaw = seg.root[-1].copy(), float(seg.yaw[-1])
        self.upper = seg.upper[-1].copy()
        self.foot_pos, self.foot_yaw = seg.foot_pos[-1].copy(), seg.foot_yaw[-1].copy()
        if family is not None:
            self.actions.append(dict(family=family, params=params, start=start, end=self.frames))

    def channels(self) -> dict:
        """All segments' channels joined over time: root, yaw, upper, foot_* and planted."""
        names = ("root", "yaw", "upper", "foot_pos", "foot_yaw", "foot_pitch", "planted")
        return {k: np.concatenate([getattr(s, k) for s in self.segments]) for k in names}

    def center(self):
        return self.foot_pos[:, [0, 2]].mean(0)

    def ground(self):
        return float(self.foot_pos[:, 1].min() - self.body.ankle_h)

    def stand_height(self):
        return self.ground() + self.body.stand_y

    def footprint(self, side, xz, yaw, ground=None):
        """Ankle target and foot yaw of a flat foot at xz, beside a body heading `yaw`."""
        ground = self.ground() if ground is None else ground
        pos = np.array([xz[0], ground + self.body.ankle_h, xz[1]])
        return pos, yaw + _sgn(side) * self.toe_out

    def neutral(self, name):
        """This performer's resting value of an upper-body channel."""
        return float(self.body.neutral[CH[name]])

    def idle(self, n):
        if n > 0:
            seg = self.segment(n)
            self.push(seg)

    # ---------------------------------------------------------------- locomotion
    def walk(self, p, run=False):
        """Walk/run along a path (straight, veering or curving); footprints alternate and the
        pelvis passes over the stance foot at mid-stance, so the root follows the feet."""
        b = self.body
        backward = p["mode"] == "backward"
        if run:
            cadence = float(np.clip(2.5 + 0.2 * (p["speed"] - 2.0), 2.45, 3.1))   # steps/s
            swing_frac, clearance, toe, sway = 1.3, 0.16, 0.35, 0.01
        else:
            cadence = float(np.clip(1.5 + 0.5 * (p["speed"] - 0.6), 1.45, 2.1))
            swing_frac, clearance, toe, sway = 0.8, 0.06, 0.25, 0.025
        P, L, n = FPS / cadence, p["speed"] / cadence, p["steps"]
        lengths = np.full(n, L)
        lengths[0] *= 0.6                    # start and stop with shorter steps
        if run:
            lengths[1] *= 0.8
            lengths[-2] *= 0.6
        lengths[-1] = 0.0                    # the last step brings the feet together
        s_foot = np.cumsum(lengths)
        dist = max(s_foot[-1], 1e-3)

        # The path: travel direction as a function of arclength, integrated to positions.
        s = np.linspace(0.0, dist, 256)
        if p["mode"] in ("left", "right"):
            frac = minjerk(s / min(dist, 2.0 * L))
        elif p["mode"] == "curve":
            frac = s / dist
        else:
            frac = np.zeros_like(s)
        travel = self.yaw + (np.pi if backward else 0.0) + p["turn"] * frac
        d = heading_vec(travel)
        xz = self.root[[0, 2]] + np.concatenate(
            [[[0.0, 0.0]], np.cumsum(0.5 * (d[1:] + d[:-1]) * (s[1] - s[0]), 0)])
        body_yaw = travel - (np.pi if backward else 0.0)

        def at(q):
            return np.array([np.interp(q, s, xz[:, 0]), np.interp(q, s, xz[:, 1])]), \
                float(np.interp(q, s, body_yaw))

        t0 = 2.0
        swing = swing_frac * P
        land = t0 + P * np.arange(1, n + 1)
        seg = self.segment(land[-1] + 0.6 * P)
        pelvis, yaws = [], []
        first = p["first"]
        for k in range(n):
            side = first if k % 2 == 0 else 1 - first
            c, yk = at(s_foot[k])
            pos, fyaw = self.footprint(side, c + _sgn(side) * b.half_width * left_vec(yk), yk)
            seg.swing(side, max(land[k] - swing, 1.0), land[k], pos, fyaw, clearance, toe)
            # Mid-swing of this foot = mid-stance of the other: the pelvis is over that foot.
            c0, y0 = at(s_foot[k - 1] if k > 0 else 0.0)
            t_mid = max(land[k] - swing / 2, 1.0 + 0.5 * k)
            pelvis.append((t_mid, c0 - _sgn(side) * sway * left_vec(y0)))
            yaws.append((t_mid, y0))
        c, yk = at(dist)
        pelvis.append((land[-1] + 0.5 * P, c))
        yaws.append((land[-1] + 0.5 * P, yk))
        seg.path(pelvis, yaws)
        seg.root[:, 1] = self.stand_height() - (0.03 if run else 0.0)

        # Arms swing against the legs; the shoulders counter-rotate a little.
        lean = (0.2 if run else 0.04 * p["speed"]) * (-0.5 if backward else 1.0)
        elbow = 1.4 if run else 0.35
        ramp = min(0.6 * P, seg.n / 3)
        keys = {"spine_pitch": [(ramp, self.neutral("spine_pitch") + lean),
                                (seg.n - ramp, self.neutral("spine_pitch") + lean),
                                (seg.n, self.neutral("spine_pitch"))]}
        for side in (LEFT, RIGHT):
            e = self.neutral(arm(side, "elbow"))
            keys[arm(side, "elbow")] = [(ramp, e + elbow), (seg.n - ramp, e + elbow), (seg.n, e)]
        seg.ease(keys)
        fwd = heading_vec(seg.yaw)
        ahead = ((seg.foot_pos[:, RIGHT, [0, 2]] - seg.foot_pos[:, LEFT, [0, 2]]) * fwd).sum(-1)
        ahead = np.clip(ahead / max(L, 0.3), -1.2, 1.2)
        amp = 0.7 if run else 0.2 + 0.2 * p["speed"]
        seg.upper[:, CH["l_flex"]] += amp * ahead
        seg.upper[:, CH["r_flex"]] -= amp * ahead
        seg.upper[:, CH["spine_yaw"]] -= 0.12 * ahead
        self.push(seg, "run" if run else "walk", p)

    def turn(self, p):
        """Turn on the spot: small steps, each foot re-placed around the pivot at a new angle."""
        b, angle = self.body, p["angle"]
        P = p["period"] * FPS
        n = int(np.ceil(abs(angle) / 1.2)) + 1           # at most ~70 degrees per step
        first = LEFT if angle > 0 else RIGHT
        c, yaw0 = self.center(), self.yaw
        land = 2.0 + P * np.arange(1, n + 1)
        swing = 0.75 * P
        seg = self.segment(land[-1] + 0.5 * P)
        pelvis, yaws = [], []
        for k in range(n):
            side = first if k % 2 == 0 else 1 - first
            yk = yaw0 + angle * min(1.0, (k + 1) / (n - 1))
            pos, fyaw = self.footprint(side, c + _sgn(side) * b.half_width * left_vec(yk), yk)
            seg.swing(side, land[k] - swing, land[k], pos, fyaw, 0.05, 0.15)
            t_mid = land[k] - swing / 2
            ym = yaw0 + angle * min(1.0, (k + 0.6) / (n - 1))
            pelvis.append((t_mid, c - _sgn(side) * 0.02 * left_vec(ym)))
            yaws.append((t_mid, ym))
        pelvis.append((land[-1] + 0.4 * P, c))
        yaws.append((land[-1] + 0.4 * P, yaw0 + angle))
        seg.path(pelvis, yaws)
        seg.root[:, 1] = self.stand_height()
        self.push(seg, "turn", p)

    def sidestep(self, p):
        """Step sideways: the leading foot steps out, the other closes in, `steps` times."""
        b, side = self.body, p["side"]
        sg, lead, trail = _sgn(side), side, 1 - side
        P, W = p["period"] * FPS, p["width"]
        lv, c0 = left_vec(self.yaw), self.center()
        seg = self.segment(2.0 + 2 * P * p["steps"] + 0.5 * P)
        pelvis, t = [], 2.0
        for i in range(p["steps"]):
            c_prev, c = c0 + sg * W * i * lv, c0 + sg * W * (i + 1) * lv
            pos, fyaw = self.footprint(lead, c + sg * b.half_width * lv, self.yaw)
            seg.swing(lead, t, t + 0.75 * P, pos, fyaw, 0.05, 0.0)
            pelvis.append((t + 0.4 * P, c_prev - sg * 0.3 * b.half_width * lv))
            pos, fyaw = self.footprint(trail, c - sg * b.half_width * lv, self.yaw)
            seg.swing(trail, t + P, t + 1.75 * P, pos, fyaw, 0.04, 0.0)
            pelvis.append((t + 1.4 * P, c + sg * 0.3 * b.half_width * lv))
            t += 2 * P
        pelvis.append((t + 0.3 * P, c0 + sg * W * p["steps"] * lv))
        seg.path(pelvis)
        seg.root[:, 1] = self.stand_height()
        seg.ease({arm(side, "abd"): [(P, self.neutral(arm(side, "abd")) + 0.15),
                                     (seg.n, self.neutral(arm(side, "abd")))]})
        self.push(seg, "sidestep", p)

    def climb(self, p):
        """Step up onto a box: lead foot up, shift the weight over it, bring the other foot up."""
        b, h = self.body, p["height"]
        lead, sg = p["lead"], _sgn(p["lead"])
        fwd, lv, c = heading_vec(self.yaw), left_vec(self.yaw), self.center()
        toe = b.lengths[_TOE[0]] * 0.95
        onto = toe + p["gap"] + 0.08 + p["onto"]        # ankles this far ahead on the box top
        top = self.ground() + h
        s = FPS
        t1, t2 = 0.35 * s, 0.35 * s + p["swing"] * s     # lead foot swing
        t3 = t2 + 0.5 * s                                  # weight over the lead foot
        t4 = t3 + p["swing"] * s * 0.9                     # trailing foot lands
        seg = self.segment(t4 + 0.6 * s)
        pos, fyaw = self.footprint(lead, c + sg * b.half_width * lv + fwd * onto, self.yaw, top)
        seg.swing(lead, t1, t2, pos, fyaw, 0.05, 0.1, lead=0.35, lift_first=0.4)
        pos, fyaw = self.footprint(1 - lead, c - sg * b.half_width * lv + fwd * onto, self.yaw,
                                   top)
        seg.swing(1 - lead, t3 - 0.1 * s, t4, pos, fyaw, 0.05, 0.1, lead=0.35, lift_first=0.4)
        seg.path([(t1 + 0.2 * s, c - sg * 0.04 * lv), (t2, c + fwd * 0.3 * onto),
                  (t3, c + fwd * 0.85 * onto + sg * 0.04 * lv), (t4 + 0.5 * s, c + fwd * onto)])
        y0 = self.stand_height()
        seg.height([(t2, y0 + 0.3 * h), (t3, y0 + 0.8 * h), (t4 + 0.4 * s, y0 + h)])
        sp = self.neutral("spine_pitch")
        seg.ease({"spine_pitch": [(t1, sp + 0.2), (t3, sp + 0.3), (seg.n, sp)],
                  "neck_pitch": [(t1, self.neutral("neck_pitch") + 0.2),
                                 (seg.n, self.neutral("neck_pitch"))]})
        self.push(seg, "climb", p)
        # The box: its front edge `gap` ahead of the toes; placed later from the final joints.
        self.furniture.append(dict(kind="step", frame=self.frames - 1, height=h,
                                   back=onto - toe - p["gap"], depth=p["depth"],
                                   width=p["width"]))

    def jump(self, p):
        """Crouch, push off, fly on a ballistic arc (with gravity), land and absorb."""
        b, H, D = self.body, p["height"], p["distance"]
        ah, dt = b.ankle_h, 1.0 / FPS
        fwd = heading_vec(self.yaw)
        y_stand, ground = self.stand_height(), self.ground()
        d = max(3, int(round(np.sqrt(8 * H / GRAVITY) * FPS)))   # flight intervals (frames)
        v0 = 0.5 * GRAVITY * d * dt * dt                           # take-off speed, m/frame
        plan = []
        for _ in range(p["count"]):
            xz = self.root[[0, 2]] + fwd * D * len(plan)
            feet = self.foot_pos + np.array([fwd[0], 0.0, fwd[1]]) * D * len(plan)
            y_to = min(reach_limit(b, np.array([xz[0], 0, xz[1]]), self.yaw, 0.0, feet[s], s)
                       for s in (LEFT, RIGHT))
            depth = 0.1 + 0.35 * H
            n_c = int(round(p["crouch"] * FPS))
            n_p = max(2, int(round(2 * (y_to - (y_stand - depth)) / v0)))
            land_depth = 0.06 + 0.2 * H
            n_l = max(2, int(round(2 * land_depth / v0)))
            plan.append(dict(xz=xz, feet=feet, y_to=y_to, depth=depth, n_c=n_c, n_p=n_p,
                             n_l=n_l, n_r=int(round(0.45 * FPS))))
        n = sum(q["n_c"] + q["n_p"] + d - 1 + q["n_l"] + q["n_r"] for q in plan)
        seg = self.segment(n)
        y = np.full(n, y_stand)
        xz = np.repeat(self.root[None, [0, 2]], n, 0)
        keys = {k: [] for k in ("spine_pitch", "neck_pitch", "l_flex", "r_flex",
                                "l_elbow", "r_elbow")}
        sp, nk = self.neutral("spine_pitch"), self.neutral("neck_pitch")
        i = 0
        for q in plan:
            y_c = y_stand - q["depth"]
            # crouch
            u = np.arange(1, q["n_c"] + 1) / q["n_c"]
            y[i:i + q["n_c"]] = y_stand + (y_c - y_stand) * minjerk(u)
            xz[i:] = q["xz"]
            i += q["n_c"]
            keys["spine_pitch"].append((i, sp + 0.5))
            keys["neck_pitch"].append((i, nk - 0.25))
            for a in ("l", "r"):
                keys[a + "_flex"].append((i, -0.7))
                keys[a + "_elbow"].append((i, 0.3))
            # push: accelerate upwards, reaching the take-off speed at full extension
            u = np.arange(1, q["n_p"] + 1) / q["n_p"]
            y[i:i + q["n_p"]] = y_c + (q["y_to"] - y_c) * u * u
            i += q["n_p"]
            keys["spine_pitch"].append((i, sp))
            for a in ("l", "r"):
                keys[a + "_flex"].append((i, 2.0))
            # flight: feet leave the floor, tuck a little, travel with the pelvis
            tau = np.arange(1, d)
            y[i:i + d - 1] = q["y_to"] + 0.5 * GRAVITY * tau * (d - tau) * dt * dt
            frac = tau / d
            xz[i:i + d - 1] = q["xz"] + fwd * D * frac[:, None]
            tuck = 0.25 * np.sin(np.pi * frac)
            for s in (LEFT, RIGHT):
                foot = q["feet"][s] + np.array([fwd[0], 0.0, fwd[1]]) * D * frac[:, None]
                foot[:, 1] = y[i:i + d - 1] - (q["y_to"] - ground - ah) * (1 - tuck)
                seg.foot_pos[i:i + d - 1, s] = foot
                seg.foot_pitch[i:i + d - 1, s] = 0.4 * np.sin(np.pi * frac)
                seg.planted[i:i + d - 1, s] = False
                seg.foot_pos[i + d - 1:, s] = q["feet"][s] + np.array([fwd[0], 0, fwd[1]]) * D
            i += d - 1
            xz[i:] = q["xz"] + fwd * D
            keys["spine_pitch"].append((i, sp - 0.05))
            # land: decelerate to rest over land_depth, then stand up again
            k = np.arange(1, q["n_l"] + 1)
            decel = v0 / q["n_l"]
            y[i:i + q["n_l"]] = q["y_to"] - v0 * k + 0.5 * decel * k * k
            i += q["n_l"]
            keys["spine_pitch"].append((i, sp + 0.35))
            for a in ("l", "r"):
                keys[a + "_flex"].append((i, 0.5))
            u = np.arange(1, q["n_r"] + 1) / q["n_r"]
            y_low = y[i - 1]
            y[i:i + q["n_r"]] = y_low + (y_stand - y_low) * minjerk(u)
            i += q["n_r"]
        for name in keys:
            keys[name].append((n, self.neutral(name)))
        seg.ease(keys)
        seg.root[:, 1] = y
        seg.root[:, [0, 2]] = xz
        self.push(seg, "jump", p)

    # ---------------------------------------------------------------- chair
    def _seated(self, hs, back):
        """Pelvis position and posture sitting on a seat (top at hs) behind the feet."""
        fwd = heading_vec(self.yaw)
        xz = self.center() - fwd * back * self.body.thigh.mean()
        y = self.ground() + hs + 0.07 * self.body.scale
        posture = {"pelvis_pitch": -0.08, "spine_pitch": self.neutral("spine_pitch") + 0.05,
                   "neck_pitch": self.neutral("neck_pitch")}
        for a in ("l", "r"):
            posture.update({a + "_flex": 0.5, a + "_elbow": 0.55, a + "_abd": 0.12,
                            a + "_twist": -0.1, a + "_hadd": 0.0})
        return xz, y, posture

    def sit(self, p):
        """Lower the pelvis back and down onto a chair behind, leaning forward on the way."""
        T = p["duration"] * FPS
        xz, y, posture = self._seated(p["seat"], p["back"])
        c, y0 = self.root[[0, 2]], self.root[1]
        seg = self.segment(T + p["hold"] * FPS)
        seg.path([(0.45 * T, c + (xz - c) * 0.3), (T, xz)])
        seg.height([(0.45 * T, y0 + (y - y0) * 0.3), (T, y)])
        sp = self.neutral("spine_pitch")
        keys = {k: [(T, v)] for k, v in posture.items()}
        keys["spine_pitch"] = [(0.5 * T, sp + 0.7), (T, posture["spine_pitch"])]
        keys["pelvis_pitch"] = [(0.5 * T, 0.3), (T, posture["pelvis_pitch"])]
        keys["neck_pitch"] = [(0.5 * T, posture["neck_pitch"] - 0.3), (T, posture["neck_pitch"])]
        for a in ("l", "r"):
            keys[a + "_flex"] = [(0.5 * T, 0.45), (T, posture[a + "_flex"])]
        seg.ease(keys)
        self.push(seg, "sit", p)
        self.seat = p
        self.furniture.append(dict(kind="chair", frame=int(self.frames - 1), seat=p["seat"],
                                   **p["chair"]))

    def stand(self, p):
        """Stand up from a chair: lean forward, push the pelvis up and over the feet."""
        T = p["duration"] * FPS
        pre = 0
        if self.seat is None:               # the clip starts seated: pose the state there
            xz, y, posture = self._seated(p["seat"], p["back"])
            self.root = np.array([xz[0], y, xz[1]])
            for k, v in posture.items():
                self.upper[CH[k]] = v
            self.seat = p
            pre = p["hold"] * FPS
            self.furniture.append(dict(kind="chair", frame=int(self.frames), seat=p["seat"],
                                       **p["chair"]))
        c_end, y_end = self.center(), self.stand_height()
        c, y0 = self.root[[0, 2]], self.root[1]
        seg = self.segment(pre + T)
        t0 = pre + 1e-3                       # keep the seated pose until then
        seg.path([(t0, c), (pre + 0.5 * T, c + (c_end - c) * 0.55), (pre + T, c_end)])
        seg.height([(t0, y0), (pre + 0.5 * T, y0 + (y_end - y0) * 0.45), (pre + T, y_end)])
        keys = {k: [(t0, self.upper[CH[k]]), (pre + T, self.neutral(k))] for k in UPPER}
        keys["spine_pitch"].insert(1, (pre + 0.4 * T, self.neutral("spine_pitch") + 0.75))
        keys["pelvis_pitch"].insert(1, (pre + 0.4 * T, 0.3))
        seg.ease(keys)
        self.push(seg, "stand", p)
        self.seat = None

    # ---------------------------------------------------------------- in place, legs
    def squat(self, p):
        """Bend hips and knees (pelvis down and back), arms forward for balance, repeat."""
        d, R = p["depth"], p["rep"] * FPS
        fwd, c, y0 = heading_vec(self.yaw), self.root[[0, 2]], self.stand_height()
        seg = self.segment(R * p["reps"] + 0.3 * FPS)
        path, height, keys = [], [], {k: [] for k in ("spine_pitch", "pelvis_pitch",
                                                       "neck_pitch", "l_flex", "r_flex")}
        sp, nk = self.neutral("spine_pitch"), self.neutral("neck_pitch")
        for i in range(p["reps"]):
            tm, te = (i + 0.5) * R, (i + 1) * R
            path += [(tm, c - fwd * 0.4 * d), (te, c)]
            height += [(tm, y0 - d), (te, y0)]
            keys["spine_pitch"] += [(tm, sp + 0.2 + 0.9 * d), (te, sp)]
            keys["pelvis_pitch"] += [(tm, 0.25 + 0.5 * d), (te, 0.0)]
            keys["neck_pitch"] += [(tm, nk - 0.5 * d), (te, nk)]
            for a in ("l", "r"):
                keys[a + "_flex"] += [(tm, 1.0 + 0.8 * d), (te, 0.6 if i < p["reps"] - 1 else
                                                           self.neutral(a + "_flex"))]
        seg.path(path)
        seg.height(height)
        seg.ease(keys)
        self.push(seg, "squat", p)

    def kick(self, p):
        """Shift onto the support foot, chamber the knee, extend the leg forward, put it back."""
        b, side = self.body, p["side"]
        support = 1 - p["side"]
        fwd3 = lambda v: np.array([v[0], 0.0, v[1]])
        fwd = heading_vec(self.yaw)
        c, y0 = self.root[[0, 2]], self.stand_height() - 0.03
        shift = c + (self.foot_pos[support, [0, 2]] - c) * 0.75
        pelvis = np.array([shift[0], y0, shift[1]])
        hip = b.hip_world(pelvis, self.yaw, -0.1, side)
        a, leg, s = p["angle"], b.leg[side], FPS * p["tempo"]
        chamber = hip + fwd3(fwd) * 0.3 * leg + np.array([0.0, -0.55 * leg, 0.0])
        extend = hip + 0.93 * leg * (fwd3(fwd) * np.sin(a) + np.array([0, -np.cos(a), 0]))
        home = self.foot_pos[side].copy()
        t = 0.4 * FPS
        foot, pitch = [(t, home)], []
        for _ in range(p["count"]):
            foot += [(t + 0.25 * s, chamber), (t + 0.42 * s, extend), (t + 0.5 * s, extend),
                     (t + 0.72 * s, chamber)]
            pitch += [(t + 0.25 * s, 0.2), (t + 0.42 * s, 0.6), (t + 0.72 * s, 0.2)]
            t += 0.72 * s
        foot.append((t + 0.3 * s, home))
        pitch.append((t + 0.3 * s, 0.0))
        seg = self.segment(t + 0.3 * s + 0.45 * FPS)
        seg.foot_keys(side, foot, pitch)
        seg.path([(0.4 * FPS, shift), (t + 0.3 * s, shift), (seg.n, c)])
        seg.height([(0.4 * FPS, y0), (t + 0.3 * s, y0), (seg.n, self.stand_height())])
        sp = self.neutral("spine_pitch")
        keys = {"pelvis_pitch": [(0.4 * FPS, -0.1), (t + 0.3 * s, -0.1), (seg.n, 0.0)],
                "spine_pitch": [(0.4 * FPS, sp - 0.1 * a), (t, sp - 0.1 * a), (seg.n, sp)]}
        for limb in (LEFT, RIGHT):                  # arms out for balance, swinging against
            abd, flex = arm(limb, "abd"), arm(limb, "flex")
            swing = -0.3 if limb == side else 0.4
            keys[abd] = [(0.4 * FPS, 0.5), (t, 0.5), (seg.n, self.neutral(abd))]
            keys[flex] = [(0.4 * FPS, swing), (t, swing), (seg.n, self.neutral(flex))]
        seg.ease(keys)
        self.push(seg, "kick", p)

    # ---------------------------------------------------------------- in place, upper body
    def wave(self, p):
        """Raise the forearm up beside the head and wave it side to side `times` times."""
        side, r = p["side"], 0.5 * FPS
        period = FPS / p["freq"]
        t_end = r + period * p["times"]
        seg = self.segment(t_end + r)
        a = lambda name: arm(side, name)
        keys = {a("abd"): [(r, p["height"]), (t_end, p["height"])],
                a("twist"): [(r, 1.45), (t_end, 1.45)],
                a("elbow"): [(r, 1.3), (t_end, 1.3)],
                a("flex"): [(r, 0.2), (t_end, 0.2)],
                "spine_roll": [(r, -_sgn(side) * 0.06), (t_end, -_sgn(side) * 0.06)]}
        for k in keys:
            keys[k].append((seg.n, self.neutral(k)))
        seg.ease(keys)
        tt = seg.t - r
        m = (tt > 0) & (tt < t_end - r)
        seg.upper[m, CH[a("elbow")]] += p["amp"] * np.sin(2 * np.pi * tt[m] / period)
        self.push(seg, "wave", p)

    def raise_arms(self, p):
        """Raise one or both arms forward or sideways to a height, hold, lower."""
        up, hold = p["speed"] * FPS, p["hold"] * FPS
        seg = self.segment(2 * up + hold)
        sides = {"left": [LEFT], "right": [RIGHT], "both": [LEFT, RIGHT]}[p["which"]]
        keys = {}
        for s in sides:
            ch = arm(s, "flex" if p["plane"] == "forward" else "abd")
            keys[ch] = [(up, p["angle"]), (up + hold, p["angle"]),
                        (seg.n, self.neutral(ch))]
            e = arm(s, "elbow")
            keys[e] = [(up, 0.1), (up + hold, 0.1), (seg.n, self.neutral(e))]
            if p["plane"] == "side":
                tw = arm(s, "twist")
                keys[tw] = [(up, 0.8), (up + hold, 0.8), (seg.n, self.neutral(tw))]
        seg.ease(keys)
        self.push(seg, "raise", p)

    def clap(self, p):
        """Bring both hands together in front of the chest and clap `times` times."""
        r, period = 0.45 * FPS, FPS / p["rate"]
        t_end = r + period * (p["times"] - 0.5)
        seg = self.segment(t_end + r + 0.2 * FPS)
        keys = {}
        for a in ("l", "r"):
            keys[a + "_flex"] = [(r, 0.6), (t_end, 0.6), (seg.n, self.neutral(a + "_flex"))]
            keys[a + "_elbow"] = [(r, 1.0), (t_end, 1.0), (seg.n, self.neutral(a + "_elbow"))]
            keys[a + "_twist"] = [(r, -0.6), (t_end, -0.6), (seg.n, self.neutral(a + "_twist"))]
            keys[a + "_hadd"] = [(r, CLAP_OPEN), (t_end, CLAP_OPEN), (seg.n, 0.0)]
        seg.ease(keys)
        tt = seg.t - r
        m = (tt > 0) & (tt < t_end - r)
        closing = 0.5 - 0.5 * np.cos(2 * np.pi * tt[m] / period)
        for a in ("l", "r"):
            seg.upper[m, CH[a + "_hadd"]] += (CLAP_MEET - CLAP_OPEN) * closing
        self.push(seg, "clap", p)

    def bow(self, p):
        """Bend forward at the hips and spine, arms hanging, then straighten up."""
        a, down, hold = p["depth"], p["down"] * FPS, p["hold"] * FPS
        seg = self.segment(2 * down + hold)
        fwd, c = heading_vec(self.yaw), self.root[[0, 2]]
        t1, t2 = down, down + hold
        seg.path([(t1, c - fwd * 0.12 * a), (t2, c - fwd * 0.12 * a), (seg.n, c)])
        sp, nk = self.neutral("spine_pitch"), self.neutral("neck_pitch")
        keys = {"pelvis_pitch": [(t1, 0.45 * a), (t2, 0.45 * a), (seg.n, 0.0)],
                "spine_pitch": [(t1, sp + 0.55 * a), (t2, sp + 0.55 * a), (seg.n, sp)],
                "neck_pitch": [(t1, nk + 0.15), (t2, nk + 0.15), (seg.n, nk)]}
        for s in ("l", "r"):
            f = self.neutral(s + "_flex")
            keys[s + "_flex"] = [(t1, f + 0.8 * a), (t2, f + 0.8 * a), (seg.n, f)]
        seg.ease(keys)
        self.push(seg, "bow", p)

    def punch(self, p):
        """Raise a guard, punch straight forward with one fist `count` times, lower the guard."""
        side, g, P = p["side"], 0.4 * FPS, p["period"] * FPS
        seg = self.segment(g + P * p["count"] + 0.5 * FPS)
        guard = {"flex": 0.75, "elbow": 2.0, "hadd": 0.35, "twist": -0.4}
        keys = {arm(s, k): [(g, v)] for s in (LEFT, RIGHT) for k, v in guard.items()}
        keys["spine_yaw"] = [(g, 0.0)]
        t = g
        for _ in range(p["count"]):
            hit, back = t + 0.25 * P, t + 0.7 * P           # extend, hold briefly, retract
            for k, v in {"flex": 1.5, "elbow": 0.05, "hadd": 0.25, "twist": 0.0}.items():
                keys[arm(side, k)] += [(hit, v), (hit + 0.1 * P, v), (back, guard[k])]
            keys["spine_yaw"] += [(hit, -_sgn(side) * 0.3), (back, 0.0)]
            t += P
        for k in keys:
            keys[k].append((seg.n, self.neutral(k)))
        seg.ease(keys)
        self.push(seg, "punch", p)

    def pick(self, p):
        """Lean forward, reach the table top with one hand, lift the object to the chest."""
        side = p["side"]
        a = lambda name: arm(side, name)
        r, grab, lift = p["reach"] * FPS, 0.3 * FPS, 0.8 * FPS
        seg = self.segment(r + grab + lift + 0.6 * FPS)
        t1, t2, t3 = r, r + grab, r + grab + lift
        sp, nk = self.neutral("spine_pitch"), self.neutral("neck_pitch")
        keys = {"spine_pitch": [(t1, sp + p["lean"]), (t2, sp + p["lean"]), (t3, sp)],
                "pelvis_pitch": [(t1, 0.4 * p["lean"]), (t2, 0.4 * p["lean"]), (t3, 0.0)],
                "neck_pitch": [(t1, nk + 0.25), (t2, nk + 0.25), (t3, nk)],
                a("flex"): [(t1, p["arm"]), (t2, p["arm"]), (t3, 0.55)],
                a("elbow"): [(t1, 0.25), (t2, 0.25), (t3, 1.9)],
                a("hadd"): [(t1, 0.15), (t2, 0.15), (t3, 0.35)],
                a("twist"): [(t1, 0.0), (t2, 0.0), (t3, -0.6)]}
        seg.ease(keys)
        self.push(seg, "pick", p)
        self.furniture.append(dict(kind="table", frame=int(self.frames - seg.n + t1 - 1),
                                   side=side, **p["table"]))


# Horizontal adduction at which the hands meet / open while clapping (see Builder.clap).
CLAP_OPEN, CLAP_MEET = -0.15, 0.2


# ============================================================================= posing

def _frame_quat(axis, direction):
    """Rotation taking the rest frame (x axis, bone along -y) onto (axis, bone direction)."""
    c1 = -direction
    c2 = np.cross(axis, c1)
    return sk.matrix_to_quat(np.stack([axis, c1, c2], -1))


def _leg_ik(hip, ankle, foot_yaw, thigh, shank):
    """Two-bone IK: thigh and shank rotations that put the ankle on its target.

    The knee bends in the plane of the leg and the foot's forward direction (rotated with the
    leg, so a leg swung forward bends its knee upwards). Unreachable targets are approached
    along the hip->target line."""
    d_vec = ankle - hip
    dist = np.linalg.norm(d_vec, axis=-1, keepdims=True)
    e = d_vec / np.maximum(dist, 1e-9)
    d = np.clip(dist, abs(thigh - shank) + 1e-4, (thigh + shank) * 0.9999)
    cos_a = (thigh ** 2 + d ** 2 - shank ** 2) / (2 * thigh * d)
    sin_a = np.sqrt(np.maximum(1 - cos_a ** 2, 0.0))
    lateral = np.stack([np.cos(foot_yaw), np.zeros_like(foot_yaw), -np.sin(foot_yaw)], -1)
    p = np.cross(e, lateral)
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    axis = np.cross(p, e)
    knee = hip + thigh * (cos_a * e + sin_a * p)
    u1 = (knee - hip) / thigh
    u2 = (hip + d * e - knee) / shank
    return _frame_quat(axis, u1), _frame_quat(axis, u2)


def _arm_quats(up, side, g9):
    """Collar, shoulder and elbow frames of one arm from its channels (left-arm convention)."""
    sg = _sgn(side)
    ch = lambda n: up[:, CH[arm(side, n)]]
    raised = np.maximum(ch("flex"), ch("abd"))
    collar = rz(sg * 0.3 * np.clip((raised - 1.3) / 1.6, 0.0, 1.0))      # shrug when overhead
    g13 = qchain(g9, collar)
    shoulder = qchain(ry(-sg * ch("hadd")), rz(sg * ch("abd")), rx(-ch("flex")),
                      ry(sg * ch("twist")))
    g16 = qchain(g13, shoulder)
    g18 = qchain(g16, rx(-ch("elbow")))
    return g13, g16, g18


def pose_clip(body: Body, ch: dict) -> np.ndarray:
    """Joint positions (F, 22, 3) by FK from a clip's channels (Builder.channels()).

    Pelvis height: the desired height, capped so every planted leg reaches its footprint;
    airborne spans follow gravity between take-off and landing."""
    root, yaw, up = ch["root"], ch["yaw"], ch["upper"]
    feet, foot_yaw, foot_pitch, planted = ch["foot_pos"], ch["foot_yaw"], ch["foot_pitch"], \
        ch["planted"]
    F = len(yaw)
    pitch = up[:, CH["pelvis_pitch"]]

    limit = np.full(F, np.inf)
    for s in (LEFT, RIGHT):
        lim = reach_limit(body, root, yaw, pitch, feet[:, s], s)
        limit = np.where(planted[:, s], np.minimum(limit, lim), limit)
    y = np.minimum(root[:, 1], limit)
    air = ~planted.any(1)
    i = 0
    while i < F:                       # ballistic arcs over airborne spans
        if not air[i]:
            i += 1
            continue
        j = i
        while j < F and air[j]:
            j += 1
        a, b = max(i - 1, 0), min(j, F - 1)
        tau = np.arange(i, j) - a
        span = max(b - a, 1)
        y[i:j] = y[a] + (y[b] - y[a]) * tau / span + 0.5 * GRAVITY * tau * (span - tau) / FPS ** 2
        i = j
    y = np.minimum(gaussian_filter1d(y, 1.0, mode="nearest"), limit)
    root = root.copy()
    root[:, 1] = y

    # Global frames: pelvis, spine (bend shared by 3 joints), neck, arms, legs by IK.
    g0 = qchain(ry(yaw), rx(pitch))
    spine = qchain(ry(up[:, CH["spine_yaw"]] / 3), rx(up[:, CH["spine_pitch"]] / 3),
                   rz(up[:, CH["spine_roll"]] / 3))
    g3 = qchain(g0, spine)
    g6 = qchain(g3, spine)
    g9 = qchain(g6, spine)
    g12 = qchain(g9, rx(up[:, CH["neck_pitch"]]))
    bone_frame = {1: g0, 2: g0, 3: g0, 6: g3, 9: g6, 12: g9, 13: g9, 14: g9, 15: g12}
    for s in (LEFT, RIGHT):
        g13, g16, g18 = _arm_quats(up, s, g9)
        bone_frame.update({_SHOULDER[s]: g13, _ELBOW[s]: g16, _WRIST[s]: g18})
        hip = body.hip_world(root, yaw, pitch, s)
        thigh, shank = _leg_ik(hip, feet[:, s], foot_yaw[:, s], body.thigh[s], body.shank[s])
        bone_frame.update({_KNEE[s]: thigh, _ANKLE[s]: shank,
                           _TOE[s]: qchain(ry(foot_yaw[:, s]), rx(foot_pitch[:, s]))})

    # HumanML3D's FK rotates each bone's rest offset (RAW_OFFSETS) by the product of the
    # quaternions along its kinematic chain, starting from the root's. Our bone rotation is
    # frame * (rest direction -> neutral direction); the chain quaternions follow by division.
    align = sk.qbetween(sk.RAW_OFFSETS[1:], _NEUTRAL_DIRS[1:])
    bone = np.zeros((F, sk.NUM_JOINTS, 4))
    for j, g in bone_frame.items():
        bone[:, j] = sk.qmul(g, align[j - 1])
    quats = np.zeros((F, sk.NUM_JOINTS, 4))
    quats[:, 0] = g0
    for chain in sk.KINEMATIC_CHAIN:
        prev = g0
        for j in chain[1:]:
            quats[:, j] = sk.qmul(sk.qinv(prev), bone[:, j])
            prev = bone[:, j]
    return sk.forward_kinematics(quats, root, body.offsets)


def _style_noise(upper, rng):
    """Slow personal sway on spine, neck and arms (a few hundredths of a radian)."""
    t = np.arange(len(upper)) / FPS
    out = upper.copy()
    for name in ("spine_pitch", "spine_yaw", "spine_roll", "neck_pitch", "l_flex", "r_flex",
                 "l_abd", "r_abd", "l_elbow", "r_elbow"):
        amp = rng.uniform(0.01, 0.035, 2)
        freq = rng.uniform(0.15, 0.6, 2)
        phase = rng.uniform(0, 2 * np.pi, 2)
        out[:, CH[name]] += (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t
                                                    + phase[:, None])).sum(0)
    return out


# ============================================================================= scene

def _box_points(center, size, yaw, n, rng, top=True):
    """n points on the side (and top) faces of an upright box, area-weighted, with normals.

    center: (x, y, z) of the box middle; size: (width along the box's left axis, height,
    depth along its forward axis); yaw: the box's forward heading."""
    w, h, d = size
    # face: (normal in the box frame, its two in-plane half extents as axis/length pairs)
    faces = [((1, 0, 0), (1, h / 2), (2, d / 2)), ((-1, 0, 0), (1, h / 2), (2, d / 2)),
             ((0, 0, 1), (0, w / 2), (1, h / 2)), ((0, 0, -1), (0, w / 2), (1, h / 2))]
    if top:
        faces.append(((0, 1, 0), (0, w / 2), (2, d / 2)))
    area = np.array([a[1] * b[1] for _, a, b in faces])
    which = rng.choice(len(faces), size=n, p=area / area.sum())
    local = np.zeros((n, 3))
    normal = np.zeros((n, 3))
    half = np.array([w, h, d]) / 2
    for f, (nrm, (ia, ha), (ib, hb)) in enumerate(faces):
        m = which == f
        k = int(m.sum())
        nrm = np.asarray(nrm, np.float64)
        local[m] = nrm * half
        local[m, ia] = rng.uniform(-ha, ha, k)
        local[m, ib] = rng.uniform(-hb, hb, k)
        normal[m] = nrm
    lv, fv = left_vec(yaw), heading_vec(yaw)
    rot = lambda v: np.stack([v[:, 0] * lv[0] + v[:, 2] * fv[0], v[:, 1],
                              v[:, 0] * lv[1] + v[:, 2] * fv[1]], -1)
    return np.concatenate([rot(local) + np.asarray(center), rot(normal)], -1)


def place_furniture(spec, joints):
    """Boxes [(center, size, yaw, top)] of one piece of furniture, placed from the final joints at
    the frame the action used it: the pelvis on the seat, the feet on the step, the hand on
    the table."""
    f = min(spec["frame"], len(joints) - 1)
    yaw = float(facing_yaw(joints[f]))
    fwd, lv = heading_vec(yaw), left_vec(yaw)
    xz3 = lambda v, y: np.array([v[0], y, v[1]])
    if spec["kind"] == "chair":
        hs, w, d, back_h = spec["seat"], spec["width"], spec["depth"], spec["back_height"]
        seat = joints[f, 0, [0, 2]] + fwd * (d / 2 - 0.14)
        legs = [xz3(seat + sx * (w / 2 - 0.03) * lv + sz * (d / 2 - 0.03) * fwd, (hs - 0.04) / 2)
                for sx in (-1, 1) for sz in (-1, 1)]
        return ([(xz3(seat, hs - 0.02), (w, 0.04, d), yaw, True),
                 (xz3(seat - fwd * (d / 2 - 0.02), hs + back_h / 2), (w, back_h, 0.04), yaw,
                  True)] + [(c, (0.04, hs - 0.04, 0.04), yaw, False) for c in legs])
    if spec["kind"] == "step":
        feet = joints[f][[7, 8], :][:, [0, 2]].mean(0)
        front = feet - fwd * spec["back"]
        center = front + fwd * spec["depth"] / 2
        return [(xz3(center, spec["height"] / 2), (spec["width"], spec["height"], spec["depth"]),
                 yaw, True)]
    if spec["kind"] == "table":
        wrist = joints[f, _WRIST[spec["side"]]]
        top = wrist[1] - 0.05
        w, d = spec["width"], spec["depth"]
        center = wrist[[0, 2]] + fwd * (d / 2 - 0.15)
        legs = [xz3(center + sx * (w / 2 - 0.04) * lv + sz * (d / 2 - 0.04) * fwd, (top - 0.04) / 2)
                for sx in (-1, 1) for sz in (-1, 1)]
        return ([(xz3(center, top - 0.02), (w, 0.04, d), yaw, True)]
                + [(c, (0.05, top - 0.04, 0.05), yaw, False) for c in legs])
    raise ValueError(spec["kind"])


def make_scene(joints, furniture, num_points, rng):
    """(N, 6) float32 points (xyz + normal): a floor patch under the motion plus furniture."""
    boxes = [b for spec in furniture for b in place_furniture(spec, joints)]
    n_furn = int(round(0.4 * num_points)) if boxes else 0
    parts = []
    if boxes:
        area = np.array([s[0] * s[2] * top + 2 * s[1] * (s[0] + s[2])
                         for _, s, _, top in boxes])
        counts = np.floor(n_furn * area / area.sum()).astype(int)
        counts[np.argmax(area)] += n_furn - counts.sum()
        parts += [_box_points(c, s, y, k, rng, top) for (c, s, y, top), k in zip(boxes, counts)
                  if k > 0]
    corners = [joints[:, :, [0, 2]].reshape(-1, 2)]
    for c, s, _, _ in boxes:
        corners.append(np.array([c[[0, 2]]]) + max(s[0], s[2]) * np.array([[-0.7, -0.7],
                                                                             [0.7, 0.7]]))
    corners = np.concatenate(corners)
    margin = rng.uniform(0.5, 1.0)
    lo, hi = corners.min(0) - margin, corners.max(0) + margin
    n_floor = num_points - n_furn
    floor = np.zeros((n_floor, 6))
    floor[:, 0] = rng.uniform(lo[0], hi[0], n_floor)
    floor[:, 2] = rng.uniform(lo[1], hi[1], n_floor)
    floor[:, 4] = 1.0
    return np.concatenate([floor] + parts).astype(np.float32), boxes


def contact_distances(points, joints):
    """(N, 22) float32: for every scene point, the minimum over frames of its distance to each
    joint (afford-motion's contact map before the Gaussian)."""
    from scipy.spatial import cKDTree
    p = np.asarray(points, np.float64)[:, :3]
    out = np.zeros((len(p), joints.shape[1]), np.float32)
    for j in range(joints.shape[1]):
        out[:, j] = cKDTree(np.asarray(joints[:, j], np.float64)).query(p)[0]
    return out


# ============================================================================= captions
# Every caption names what distinguishes the motion: the action (its family verb), and where
# relevant direction, speed, limb, object and count. Tokens follow HumanML3D's texts: the
# caption lowercased, punctuation dropped, each word as `word/POS` with spaCy's coarse tags,
# nouns and verbs lemmatised (except "left", as HumanML3D does).

FAMILIES = ("walk", "run", "jump", "turn", "sit", "stand", "wave", "kick", "squat",
            "sidestep", "raise", "climb", "clap", "bow", "punch", "pick")
# Lemmas of which every caption of a family contains at least one.
FAMILY_VERBS = {
    "walk": ("walk", "stroll", "stride"), "run": ("run", "jog", "sprint"),
    "jump": ("jump", "hop", "leap"), "turn": ("turn", "rotate", "pivot"), "sit": ("sit",),
    "stand": ("stand", "get", "rise"), "wave": ("wave",), "kick": ("kick",),
    "squat": ("squat", "crouch"), "sidestep": ("step", "sidestep", "shuffle"),
    "raise": ("raise", "lift"), "climb": ("climb", "step"), "clap": ("clap",),
    "bow": ("bow", "bend"), "punch": ("punch",), "pick": ("pick", "grab"),
}
SUBJECTS = [("a person", "his"), ("a man", "his"), ("the man", "his"), ("someone", "their"),
            ("a woman", "her"), ("the person", "their"), ("a person", "their"),
            ("the woman", "her"), ("a figure", "its")]
_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times",
          6: "six times"}
_NUMBER = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
           9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}


def _phrases(family, p):
    """Verb phrases (third person, {pos} = possessive) describing one action."""
    S = SIDE_NAMES[p["side"]] if "side" in p else None
    if family in ("walk", "run"):
        turn_side = "left" if p.get("turn", 0) > 0 else "right"
        clock = "counterclockwise" if p.get("turn", 0) > 0 else "clockwise"
        mode = p["mode"]
        if mode == "forward":
            dirs = ["forward", "forwards", "straight ahead", "ahead", "straight forward",
                    "forward in a straight line"]
        elif mode == "backward":
            dirs = ["backward", "backwards", "backward in a straight line"]
        elif mode in ("left", "right"):
            dirs = [f"to the {turn_side}", f"toward the {turn_side}",
                    f"forward and to the {turn_side}", f"to {{pos}} {turn_side}",
                    f"forward while turning {turn_side}"]
        else:
            dirs = [f"in a curve to the {turn_side}", f"along a curve to the {turn_side}",
                    f"in an arc to the {turn_side}", f"{clock} in a curve"]
            if abs(p["turn"]) > 2.5:
                dirs += [f"in a half circle to the {turn_side}"]
        if family == "walk":
            slow, fast = p["speed"] < 0.9, p["speed"] > 1.35
            verbs = ["walks"] + (["strolls"] if slow and mode != "backward" else []) + \
                (["strides"] if fast and mode != "backward" else [])
            pace = (["slowly", "at a slow pace", "leisurely"] if slow else
                    ["quickly", "briskly", "fast", "at a fast pace"] if fast else
                    ["", "at a normal pace", "steadily"])
        else:
            verbs = ["runs"] + (["jogs"] if p["speed"] < 2.5 else []) + \
                (["sprints"] if p["speed"] > 3.1 else [])
            pace = (["slowly", "lightly"] if p["speed"] < 2.5 else
                    ["quickly", "fast", "at full speed"] if p["speed"] > 3.1 else ["", ""])
        out = []
        for v in verbs:
            for d in dirs:
                out += [f"{v} {d}", f"{v} {d} {pace[len(out) % len(pace)]}"]
        steps = p["steps"]
        out += [f"{verbs[0]} {_NUMBER[min(steps, 12)]} steps {dirs[0]}"]
        return [" ".join(o.split()) for o in out]
    if family == "jump":
        high, small = p["height"] > 0.3, p["height"] < 0.16
        times = f" {_TIMES[p['count']]}" if p["count"] > 1 else ""
        if p["distance"] == 0:
            out = ["jumps in place", "jumps up", "hops in place", "jumps straight up",
                   "jumps on the spot"]
            if p["count"] > 1:
                out += ["jumps up and down"]
        else:
            out = ["jumps forward", "jumps ahead", "hops forward" if p["distance"] < 0.6 else
                   "leaps forward", "jumps forward with both feet"]
        if high:
            out = [o + " high" if o.endswith("place") or o.endswith("up") else o for o in out]
            out += ["jumps high" + (" forward" if p["distance"] else "")]
        if small:
            out += ["does a small jump" + (" forward" if p["distance"] else "")]
        return [o + times for o in out]
    if family == "turn":
        side = "left" if p["angle"] > 0 else "right"
        clock = "counterclockwise" if p["angle"] > 0 else "clockwise"
        a = abs(p["angle"])
        out = [f"turns {side}", f"turns to the {side}", f"turns to {{pos}} {side}",
               f"rotates to the {side}", f"pivots to the {side}", f"turns {clock} to the {side}"]
        if a > 2.6:
            out = [f"turns around to the {side}", f"turns all the way around to the {side}",
                   f"turns around to {{pos}} {side}", f"pivots around to the {side}"]
        elif 1.3 < a < 1.85:
            out += [f"turns ninety degrees to the {side}", f"turns ninety degrees {side}"]
        elif a < 1.0:
            out = [f"turns slightly to the {side}", f"turns a little to the {side}",
                   f"turns slightly {side}", f"rotates slightly to the {side}"]
        return out
    if family == "sit":
        out = ["sits down on a chair", "sits down on the chair", "sits on a chair",
               "sits down onto a chair", "sits down in a chair"]
        if p["duration"] > 1.7:
            out += ["slowly sits down on a chair", "sits down slowly on the chair"]
        if p["seat"] < 0.43:
            out += ["sits down on a low chair"]
        return out
    if family == "stand":
        out = ["stands up from a chair", "stands up from the chair", "gets up from a chair",
               "rises from the chair", "gets up off the chair", "stands up out of a chair"]
        if p["duration"] > 1.7:
            out += ["slowly stands up from the chair"]
        return out
    if family == "wave":
        times = _TIMES[p["times"]]
        out = [f"waves {{pos}} {S} hand", f"waves with {{pos}} {S} hand", f"waves the {S} hand",
               f"raises {{pos}} {S} hand and waves", f"waves {{pos}} {S} arm",
               f"waves {{pos}} {S} hand {times}", f"waves with the {S} hand {times}"]
        if p["height"] > 2.0:
            out += [f"waves {{pos}} {S} hand above {{pos}} head"]
        if p["amp"] > 0.45:
            out += [f"waves {{pos}} {S} arm widely"]
        elif p["amp"] < 0.32:
            out += [f"gently waves {{pos}} {S} hand"]
        return out
    if family == "kick":
        h = "high" if p["angle"] > 1.25 else "low" if p["angle"] < 0.85 else ""
        times = f" {_TIMES[p['count']]}" if p["count"] > 1 else ""
        out = [f"kicks with {{pos}} {S} leg", f"kicks {{pos}} {S} leg forward",
               f"kicks forward with the {S} foot", f"kicks with the {S} foot",
               f"kicks {{pos}} {S} foot out in front"]
        if h:
            out += [f"does a {h} kick with {{pos}} {S} leg", f"kicks {h} with the {S} leg"]
        return [o + times for o in out]
    if family == "squat":
        n, deep = p["reps"], p["depth"] > 0.36
        shallow = p["depth"] < 0.25
        adj = "deep " if deep else "shallow " if shallow else ""
        if n == 1:
            out = ["squats down", "squats down and stands back up", "crouches down",
                   f"does a {adj}squat", "squats once"]
        else:
            out = [f"squats {_TIMES[n]}", f"does {_NUMBER[n]} {adj}squats",
                   f"squats down and up {_TIMES[n]}", f"crouches down {_TIMES[n]}"]
        if deep:
            out += ["squats down deeply" + (f" {_TIMES[n]}" if n > 1 else "")]
        return out
    if family == "sidestep":
        n = p["steps"]
        count = "a step" if n == 1 else f"{_NUMBER[n]} steps"
        times = f" {_TIMES[n]}" if n > 1 else ""
        return [f"steps to the {S}" + times, f"steps sideways to the {S}" + times,
                f"takes {count} to the {S}", f"sidesteps to the {S}" + times,
                f"takes {count} sideways to the {S}", f"shuffles sideways to the {S}"]
    if family == "raise":
        which, plane, a = p["which"], p["plane"], p["angle"]
        obj = (["both arms", "{pos} arms", "both {pos} arms"] if which == "both" else
               [f"{{pos}} {which} arm", f"the {which} arm", f"{{pos}} {which} hand"])
        if a > 2.5:
            where = ["above {pos} head", "up over {pos} head", "high above {pos} head"]
        elif a < 1.75:
            where = ["to shoulder height", "up to shoulder level"]
        else:
            where = ["up", "up high"]
        if plane == "forward":
            where = [w + " in front of {pos} body" if w in ("to shoulder height",) else w
                     for w in where] + (["forward", "out in front"] if a < 1.75 else [])
        else:
            where += ["out to the side" + ("s" if which == "both" else "")] if a < 2.5 else []
        return [f"{v} {o} {w}" for v in ("raises", "lifts") for o in obj for w in where]
    if family == "climb":
        h = "low " if p["height"] < 0.2 else "high " if p["height"] > 0.32 else ""
        lead = SIDE_NAMES[p["lead"]]
        return [f"climbs onto a {h}step", f"steps up onto a {h}box", f"climbs up onto a {h}box",
                f"steps up onto a {h}platform", f"climbs onto a {h}platform",
                f"steps up onto a {h}step with {{pos}} {lead} foot first",
                f"steps up onto a {h}box leading with the {lead} foot"]
    if family == "clap":
        times = _TIMES[p["times"]]
        return [f"claps {{pos}} hands {times}", f"claps {times}", "claps {pos} hands",
                f"claps {{pos}} hands together {times}", "claps in front of {pos} chest",
                f"claps {times} in front of {{pos}} chest"]
    if family == "bow":
        deep, slight = p["depth"] > 0.95, p["depth"] < 0.6
        out = ["bows", "bows forward", "takes a bow", "bends forward at the waist",
               "bows and stands back up"]
        if deep:
            out += ["bows deeply", "takes a deep bow", "bends far forward at the waist"]
        if slight:
            out += ["bows slightly", "bows a little", "takes a small bow"]
        return out
    if family == "punch":
        n = p["count"]
        times = f" {_TIMES[n]}" if n > 1 else ""
        out = [f"punches forward with {{pos}} {S} fist" + times,
               f"punches with {{pos}} {S} hand" + times,
               f"punches the air with {{pos}} {S} fist" + times,
               f"punches straight ahead with the {S} arm" + times]
        out += [f"throws a punch with {{pos}} {S} arm"] if n == 1 else \
            [f"throws {_NUMBER[n]} punches with {{pos}} {S} hand"]
        return out
    if family == "pick":
        return [f"picks up something from the table with {{pos}} {S} hand",
                f"picks up an object from the table with the {S} hand",
                f"reaches forward and picks up an item from the table with {{pos}} {S} hand",
                f"grabs something from the table with {{pos}} {S} hand",
                f"picks something up off the table with {{pos}} {S} hand",
                f"leans over and picks up a cup from the table with the {S} hand"]
    raise ValueError(family)


_CONNECT = [" then ", " and then ", ", then ", ", and then ", " and ", ", after that "]


def make_captions(actions, rng, n=3):
    """n whole-clip captions (varied subject, synonyms and connectors), plus one caption per
    action of a multi-action clip with its time span: [(caption, start_s, end_s)]."""
    whole = []
    for _ in range(20 * n):
        subj, pos = SUBJECTS[rng.integers(len(SUBJECTS))]
        parts = []
        for a in actions:
            opts = _phrases(a["family"], a["params"])
            parts.append(opts[rng.integers(len(opts))].replace("{pos}", pos))
        text = subj
        for i, part in enumerate(parts):
            if i == 0:
                text += (" first " if len(parts) > 1 and rng.random() < 0.15 else " ") + part
            else:
                text += _CONNECT[rng.integers(len(_CONNECT))] + part
        text += "."
        if text not in whole:
            whole.append(text)
        if len(whole) == n:
            break
    lines = [(t, 0.0, 0.0) for t in whole]
    if len(actions) > 1:
        for a in actions:
            subj, pos = SUBJECTS[rng.integers(len(SUBJECTS))]
            opts = _phrases(a["family"], a["params"])
            part = opts[rng.integers(len(opts))].replace("{pos}", pos)
            lines.append((f"{subj} {part}.", a["start"] / FPS, a["end"] / FPS))
    return lines


# Built-in lexicon: surface word -> (lemma, coarse POS). Words listed under both NOUN and VERB
# are told apart by the previous word (after a determiner, number or adjective: a noun);
# "left"/"right" and a few adjective/adverb words likewise by their neighbours.
_LEXICON_TEXT = """
DET: a an the his her their its both each
PRON: someone something it that
NOUN: person man woman figure hand hands=hand arm arms=arm leg legs=leg foot feet=foot
  chair table step steps=step box platform fist head chest waist body shoulder level height
  side sides=side squat squats=squat kick kicks=kick punch punches=punch bow item object cup
  time times=time degree degrees=degree curve arc line circle pace spot air speed front
  way jump place
VERB: walks=walk strolls=stroll strides=stride runs=run jogs=jog sprints=sprint jumps=jump
  hops=hop leaps=leap turns=turn turning=turn rotates=rotate pivots=pivot sits=sit
  stands=stand gets=get rises=rise waves=wave raises=raise lifts=lift kicks=kick
  squats=squat crouches=crouch steps=step sidesteps=sidestep shuffles=shuffle climbs=climb
  claps=clap bows=bow bends=bend punches=punch throws=throw picks=pick grabs=grab
  reaches=reach does=do takes=take leans=lean leading=lead
ADJ: left right high low deep shallow small slow fast normal straight full half little
  first
ADV: quickly slowly briskly leisurely gently widely lightly steadily deeply slightly then
  forward forwards backward backwards ahead sideways twice once around counterclockwise
  clockwise together far back all high fast straight first
ADP: on onto in into to toward from with at of over above along off out down up before
  after
NUM: two three four five six seven eight nine ten eleven twelve ninety
CCONJ: and
SCONJ: while
"""
_LEXICON, _DUAL = {}, set()
for _line in _LEXICON_TEXT.replace("\n  ", " ").strip().splitlines():
    _pos, _words = _line.split(":", 1)
    for _w in _words.split():
        _surface, _, _lemma = _w.partition("=")
        if _surface in _LEXICON and _LEXICON[_surface][1] != _pos:
            _DUAL.add(_surface)
        _LEXICON.setdefault(_surface, (_lemma or _surface, _pos))
_NOUNISH = {"DET", "NUM", "ADJ"}
_BODY_NOUNS = {"hand", "hands", "arm", "arms", "leg", "legs", "foot", "feet", "fist", "side"}


def tag_caption(caption: str) -> str:
    """'a person walks forward.' -> 'a/DET person/NOUN walk/VERB forward/ADV'."""
    words = [w.strip(".,;:!?") for w in caption.lower().split()]
    words = [w for w in words if w.isalpha()]
    tags = []
    for i, w in enumerate(words):
        lemma, pos = _LEXICON[w]                      # KeyError = a word missing above
        prev = tags[-1][1] if tags else None
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if w in ("left", "right"):
            pos = "ADJ" if nxt in _BODY_NOUNS else "NOUN" if prev == "DET" else "ADV"
        elif w in _DUAL:
            if pos in ("NOUN", "VERB"):
                noun = prev in _NOUNISH
                pos = "NOUN" if noun else "VERB"
                lemma = _LEXICON[w][0]
            else:                                     # ADJ or ADV
                pos = "ADJ" if prev == "DET" or _LEXICON.get(nxt, ("", ""))[1] == "NOUN" \
                    else "ADV"
        if pos not in ("NOUN", "VERB"):
            lemma = w
        tags.append((lemma, pos))
    return " ".join(f"{lemma}/{pos}" for lemma, pos in tags)


# ============================================================================= clips

def sample_params(family, rng, short=False):
    """Continuous parameters of one action. short: fewer repetitions and shorter holds, for
    actions that share a clip with others (a clip must stay under 10 s)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))
    n = lambda lo, hi, hi_short: int(rng.integers(lo, hi_short if short else hi))
    side = int(rng.integers(2))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    hold = u(0.2, 0.6) if short else u(0.4, 1.5)
    if family == "walk":
        mode = str(rng.choice(["forward", "forward", "backward", "left", "right", "curve"]))
        turn = {"left": u(0.8, 1.7), "right": -u(0.8, 1.7), "curve": sign * u(1.0, 3.1)}
        speed = u(0.45, 0.95) if mode == "backward" else u(0.55, 1.75)
        steps = n(3, 9, 6) if mode == "backward" else n(4, 11, 6)
        return dict(mode=mode, speed=speed, steps=steps, turn=turn.get(mode, 0.0), first=side)
    if family == "run":
        mode = str(rng.choice(["forward", "forward", "curve"]))
        return dict(mode=mode, speed=u(1.9, 3.6), steps=n(6, 13, 9),
                    turn=sign * u(0.8, 2.5) if mode == "curve" else 0.0, first=side)
    if family == "jump":
        forward = rng.random() < 0.5
        return dict(height=u(0.08, 0.4), distance=u(0.3, 1.1) if forward else 0.0,
                    count=n(1, 3 if forward else 4, 2), crouch=u(0.3, 0.5))
    if family == "turn":
        return dict(angle=sign * u(0.6, 3.3), period=u(0.45, 0.75))
    if family in ("sit", "stand"):
        chair = dict(width=u(0.42, 0.52), depth=u(0.4, 0.48), back_height=u(0.35, 0.5))
        return dict(seat=u(0.4, 0.52), back=u(0.85, 0.97),
                    duration=u(1.0, 1.6) if short else u(1.1, 2.1), hold=hold,
                    chair=chair)
    if family == "wave":
        return dict(side=side, times=n(2, 6, 4), amp=u(0.25, 0.6), height=u(1.3, 2.5),
                    freq=u(1.4, 2.4))
    if family == "kick":
        return dict(side=side, angle=u(0.6, 1.55), count=n(1, 3, 2), tempo=u(0.8, 1.2))
    if family == "squat":
        return dict(depth=u(0.18, 0.45), reps=n(1, 5, 3), rep=u(1.3, 2.3))
    if family == "sidestep":
        return dict(side=side, steps=n(1, 5, 3), width=u(0.2, 0.42), period=u(0.45, 0.7))
    if family == "raise":
        return dict(which=str(rng.choice(["left", "right", "both"])),
                    plane=str(rng.choice(["forward", "side"])), angle=u(1.3, 3.0),
                    hold=hold, speed=u(0.5, 1.0))
    if family == "climb":
        return dict(height=u(0.12, 0.42), lead=side, gap=u(0.05, 0.25), onto=u(0.0, 0.06),
                    depth=u(0.45, 0.65), width=u(0.6, 1.0), swing=u(0.7, 1.0))
    if family == "clap":
        return dict(times=n(2, 7, 5), rate=u(1.8, 3.0))
    if family == "bow":
        return dict(depth=u(0.5, 1.3), down=u(0.6, 1.1), hold=hold)
    if family == "punch":
        return dict(side=side, count=n(1, 4, 3), period=u(0.45, 0.8))
    if family == "pick":
        table = dict(width=u(0.8, 1.2), depth=u(0.5, 0.7))
        return dict(side=side, reach=u(0.8, 1.3), lean=u(0.45, 0.85), arm=u(1.0, 1.3),
                    table=table)
    raise ValueError(family)


# Walking is the most common motion in HumanML3D: it leads a clip twice as often as the rest.
_FIRST_WEIGHTS = np.array([2.0 if f == "walk" else 1.0 for f in FAMILIES])
_FIRST_WEIGHTS /= _FIRST_WEIGHTS.sum()


def _successors(family):
    """Which actions may follow `family` (sitting leads to standing; climbing onto a box and
    picking from the table end a clip; standing up needs a chair)."""
    if family == "sit":
        return ["stand"]
    if family in ("climb", "pick"):
        return []
    return [f for f in FAMILIES if f != "stand"]


def sample_plan(rng, families=None):
    """1-3 actions [(family, params)]; a sit after walking/running first turns around to face
    away from the chair. families: fix the action sequence (parameters are still sampled)."""
    if families is None:
        k = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
        plan = [str(rng.choice(FAMILIES, p=_FIRST_WEIGHTS))]
        while len(plan) < k:
            nxt = _successors(plan[-1])
            if not nxt:
                break
            plan.append(str(rng.choice(nxt)))
    else:
        plan = list(families)
    out, short = [], len(plan) > 1
    for fam in plan:
        if fam == "sit" and out and out[-1][0] in ("walk", "run") and \
                out[-1][1]["mode"] != "backward":
            out.append(("turn", dict(angle=float(np.pi * (1 if rng.random() < 0.5 else -1)),
                                     period=float(rng.uniform(0.45, 0.6)))))
        out.append((fam, sample_params(fam, rng, short)))
    return out


_ACTIONS = {"walk": Builder.walk, "run": lambda b, p: b.walk(p, run=True), "jump": Builder.jump,
            "turn": Builder.turn, "sit": Builder.sit, "stand": Builder.stand,
            "wave": Builder.wave, "kick": Builder.kick, "squat": Builder.squat,
            "sidestep": Builder.sidestep, "raise": Builder.raise_arms, "climb": Builder.climb,
            "clap": Builder.clap, "bow": Builder.bow, "punch": Builder.punch,
            "pick": Builder.pick}


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The clip's own random stream: depends only on (seed, index), so any worker can make it."""
    return np.random.default_rng([int(seed), int(index)])


def generate_clip(rng, index: int = 0, num_points: int = 1024, families=None) -> dict:
    """One clip: features (T, 263), joints (T, 22, 3), captions, scene points and contacts.

    rng: a numpy Generator or an int seed (then the stream is clip_rng(seed, index)).
    families: optional fixed action sequence, e.g. ["walk", "sit"] (tests, debugging).
    """
    if not isinstance(rng, np.random.Generator):
        rng = clip_rng(rng, index)
    for _ in range(50):
        plan = sample_plan(rng, families)
        body = Body(rng)
        b = Builder(body, rng)
        if plan[0][0] != "stand":              # a clip starting seated has no lead-in
            b.idle(rng.integers(0, 10))
        for i, (fam, params) in enumerate(plan):
            _ACTIONS[fam](b, params)
            if i < len(plan) - 1:
                b.idle(rng.integers(0, 6))
        b.idle(rng.integers(4, 16))
        min_frames = int(rng.integers(61, 90)) if rng.random() < 0.85 else int(rng.integers(41, 61))
        if b.frames < min_frames:
            b.idle(min_frames - b.frames)
        if MIN_T <= b.frames - 1 < MAX_T:
            break
    else:
        raise RuntimeError("could not fit a clip under 200 frames")
    channels = b.channels()
    channels["upper"] = _style_noise(channels["upper"], rng)
    planned = pose_clip(body, channels)

    # HumanML3D's pipeline: canonical pose -> 263-d features -> joints recovered from them. The continuous
    # root angular velocity: a clip that turns through 180 degrees would otherwise get one negated row, and
    # its joints (recovered from the features) a kink there; it also keeps the data as generated before.
    features = sk.extract_features(sk.canonicalize(planned), continuous_root=True)
    joints = sk.recover_from_ric(features).astype(np.float32)
    T = len(features)
    points, boxes = make_scene(joints, b.furniture, num_points, rng)
    dist = contact_distances(points, joints)
    lines = make_captions(b.actions, rng)
    text = [f"{c}#{tag_caption(c)}#{s:.2f}#{e:.2f}" if e > 0 else f"{c}#{tag_caption(c)}#0.0#0.0"
            for c, s, e in lines]
    return dict(index=index, id=f"{index:06d}", features=features, joints=joints,
                captions=[c for c, _, e in lines if e == 0], text_lines=text, points=points,
                dist=dist, family=b.actions[0]["family"],
                families=[a["family"] for a in b.actions], actions=b.actions,
                planted=channels["planted"][:T], furniture=b.furniture, boxes=boxes,
                scale=body.scale)


# ============================================================================= dataset

def _save_npz(path, **arrays):
    """np.savez with fixed zip timestamps, so equal arrays give byte-identical files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())


def _write_clip(index, root, seed, num_points):
    """Worker: make one clip, write its four files, return what the dataset summary needs."""
    clip = generate_clip(clip_rng(seed, index), index, num_points)
    cid = clip["id"]
    np.save(root / "new_joint_vecs" / f"{cid}.npy", clip["features"])
    np.save(root / "new_joints" / f"{cid}.npy", clip["joints"])
    (root / "texts" / f"{cid}.txt").write_text("\n".join(clip["text_lines"]) + "\n")
    _save_npz(root / "contacts" / f"{cid}.npz", points=clip["points"], dist=clip["dist"])
    f = clip["features"].astype(np.float64)
    mean = f.mean(0)
    return dict(index=index, families=clip["families"], frames=len(f), mean=mean,
                m2=((f - mean) ** 2).sum(0))


def _pooled_mean_std(stats):
    """Mean and std over all rows of several clips from per-clip (count, mean, M2), in order."""
    n, mean, m2 = 0, np.zeros(sk.FEATURE_DIM), np.zeros(sk.FEATURE_DIM)
    for s in stats:
        k = s["frames"]
        delta = s["mean"] - mean
        mean = mean + delta * k / (n + k)
        m2 = m2 + s["m2"] + delta ** 2 * n * k / (n + k)
        n += k
    return mean, np.sqrt(m2 / n)


def humanml3d_std(std):
    """HumanML3D's cal_mean_variance: every feature group gets the mean std of its group
    (root rot vel, root lin vel, root y, ric, rot 6D, local velocity, foot contacts), so a
    group is normalised as a whole and no single dim is blown up."""
    std = np.array(std, np.float64)
    for g in (sk.ROOT_ROT_VEL, sk.ROOT_LIN_VEL, sk.ROOT_Y, sk.RIC, sk.ROT6D, sk.LOCAL_VEL,
              sk.FOOT_CONTACT):
        std[g] = std[g].mean()
    return std


def split_ids(num_clips, seed):
    """~80/5/15 train/val/test split of the clip ids, shuffled by the seed."""
    order = np.random.default_rng(int(seed)).permutation(num_clips)
    n_test = max(1, int(round(0.15 * num_clips))) if num_clips >= 3 else 0
    n_val = max(1, int(round(0.05 * num_clips))) if num_clips >= 3 else 0
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {name: sorted(int(i) for i in idx) for name, idx in
            (("train", train), ("val", val), ("test", test))}


# ----------------------------------------------------------------------------- ownership
# The generator replaces only a folder it wrote itself and can prove unchanged. Its proof is
# MANIFEST (written last, inside the folder): the generator's fingerprint, the settings, and the
# size and sha256 of every file it wrote. A folder is replaced when it holds that manifest, nothing
# but the files listed in it (plus the derived preview/*.gif and text_features/*.pt that this
# project writes into a dataset), and none of them changed. Anything else is refused: the
# generator never deletes or overwrites a file it cannot prove it wrote.

MANIFEST = "synthetic_manifest.json"
FINGERPRINT = hashlib.sha256(f"cmdm.data.synthetic {GENERATOR_VERSION}".encode()).hexdigest()[:16]
_LAYOUT = re.compile(r"(new_joint_vecs|new_joints)/\d{6}\.npy|texts/\d{6}\.txt|contacts/\d{6}\.npz|"
                     r"(train|val|test|all)\.txt|Mean\.npy|Std\.npy|meta\.json|"
                     + re.escape(MANIFEST) + r"(\.part)?")
# written into a dataset by others: preview GIFs (main --preview), cached caption features (cmdm.prepare,
# with the temp files of cmdm.atomic that a killed write can leave)
_DERIVED = re.compile(r"preview/[^/]+\.gif|text_features/([^/]+\.pt|\.[^/]+\.pt\.[^/]+\.tmp)")
_SUBDIRS = ("new_joint_vecs", "new_joints", "texts", "contacts", "preview", "text_features")
_ANSWER = ("Choose another folder (data.root=... for train_ray.py / tune_ray.py, --out for "
           "cmdm.data.synthetic)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_manifest(folder: Path) -> dict | None:
    """The folder's manifest if this generator wrote it (its fingerprint), else None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != "cmdm.data.synthetic" or \
            manifest.get("fingerprint") != FINGERPRINT or not isinstance(manifest.get("files", {}), dict):
        return None
    return manifest


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """(files, other entries: links, sockets, unexpected folders) under folder, as sorted relative paths."""
    files, other = [], []

    def walk(path, prefix):
        with os.scandir(path) as it:
            for e in sorted(it, key=lambda e: e.name):
                rel = prefix + e.name
                if e.is_symlink():
                    other.append(rel)
                elif e.is_dir():
                    if rel in _SUBDIRS:
                        walk(e.path, rel + "/")
                    else:
                        other.append(rel + "/")
                elif e.is_file():
                    files.append(rel)
                else:
                    other.append(rel)
    walk(folder, "")
    return files, other


def _write_manifest(folder: Path, manifest: dict) -> None:
    part = folder / (MANIFEST + ".part")
    part.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(part, folder / MANIFEST)


def dataset_problems(folder, check_contents: bool = True) -> dict:
    """What keeps `folder` from being a finished, intact dataset of this generator.

    Returns {"foreign": [...], "changed": [...], "missing": [...], "manifest": dict | None}:
    foreign = entries it did not write (everything, when there is no manifest of ours), changed =
    files whose size or sha256 differs from the manifest, missing = listed files that are gone."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    files, other = _entries(folder)
    if manifest is None or not manifest.get("complete"):
        return dict(foreign=other + files, changed=[], missing=[], manifest=None, stats=())
    listed = manifest["files"]
    foreign = other + [f for f in files if f not in listed and f != MANIFEST and not _DERIVED.fullmatch(f)]
    present = set(files)
    missing = [f for f in listed if f not in present]
    changed, stats = [], []
    for rel, (size, digest) in sorted(listed.items()):
        if rel in present:
            st = (folder / rel).stat()
            stats.append((rel, st.st_size, st.st_mtime_ns))
            if st.st_size != size or (check_contents and _sha256(folder / rel) != digest):
                changed.append(rel)
    return dict(foreign=foreign, changed=changed, missing=missing, manifest=manifest, stats=tuple(stats))


def _first(names, k=4) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def _refuse_unless_replaceable(out: Path) -> None:
    """Raise DataError unless out is absent, an empty folder, or an intact dataset of ours."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise DataError(f"{out} exists and is not a folder; the synthetic generator writes a dataset folder "
                        f"there and never replaces a file. {_ANSWER}.")
    found = dataset_problems(out)
    if found["foreign"]:
        why = "holds files that cmdm.data.synthetic did not write" if found["manifest"] else \
            f"holds files and no {MANIFEST} of cmdm.data.synthetic {GENERATOR_VERSION} (it is not a " \
            "dataset this generator wrote, or one written before synthetic sets carried a manifest)"
        raise DataError(f"{out} {why} ({_first(found['foreign'])}); the generator never deletes or "
                        f"overwrites files it cannot prove it wrote. {_ANSWER}, or move those files away "
                        "yourself; to train on a dataset of your own there, set data.name=humanml3d.")
    if found["changed"]:
        raise DataError(f"{out} is a synthetic dataset whose files were changed after generation "
                        f"({_first(found['changed'])}); the generator will not overwrite those changes. "
                        f"{_ANSWER}, or delete {out} yourself to regenerate it.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_ours(folder: Path) -> None:
    """Delete a folder of ours file by file (the manifest last), then its now empty folders; a file that is
    not ours makes rmdir fail rather than disappear."""
    files, _ = _entries(folder)
    for rel in sorted(files, key=lambda r: (r.startswith(MANIFEST), r)):
        (folder / rel).unlink()
    for sub in _SUBDIRS:
        if (folder / sub).is_dir():
            (folder / sub).rmdir()
    folder.rmdir()


def _clean_stale_temps(out: Path, log, locked: bool = True) -> None:
    """Remove `<out>.tmp-<pid>` folders left by a killed generator: pid dead (or ours, when we hold the
    lock), holding our (incomplete) manifest and only files of our layout, or nothing at all."""
    for tmp in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[1]
        if not pid.isdigit() or not tmp.is_dir() or tmp.is_symlink() or \
                (int(pid) == os.getpid() and not locked) or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        try:
            files, other = _entries(tmp)
            ours = _read_manifest(tmp) is not None and all(_LAYOUT.fullmatch(f) for f in files)
            if other or (files and not ours):
                log(f"[synthetic] leaving {tmp} alone: it holds files this generator did not write")
                continue
            _remove_ours(tmp)
            log(f"[synthetic] removed {tmp}, left by a generator that was killed (pid {pid})")
        except OSError as err:   # e.g. a worker of the dead generator still writing: try next time
            log(f"[synthetic] could not remove {tmp} yet ({err})")


@contextlib.contextmanager
def generator_lock(out: Path, log=None):
    """An exclusive lock on `.<out>.lock` beside out, so two generators on one folder take turns.

    The lock file is removed on release; a waiter that then holds the lock on the removed file sees
    that the path no longer names it and locks the new one (so two never hold it at once)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not said:
                log(f"[synthetic] waiting for another generator writing {out} (it holds {path})")
                said = True
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:
            if os.fstat(fd).st_size == 0:      # ours (we never write in it); never remove a user's file
                os.unlink(path)
        finally:
            os.close(fd)


def _settings(num_clips, seed, num_points) -> dict:
    return dict(num_clips=int(num_clips), seed=int(seed), num_points=int(num_points), version=GENERATOR_VERSION)


def generate_dataset(out_dir, num_clips=2000, seed=0, num_points=1024, workers=None,
                     progress=True, log=None) -> Path:
    """Write the whole dataset to out_dir (replacing an earlier one of ours) and return its path.

    Refuses (DataError) a folder holding anything it did not write. Clips are made in a process
    pool (each from its own (seed, index) stream, so the files do not depend on the number of
    workers) into `<out>.tmp-<pid>`, renamed to `out` at the end with the manifest written last: an
    interrupted run never looks finished, and the next run removes the temp folder a killed one
    left. Two generators on one folder take turns (a file lock)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if int(num_clips) < 1:
        raise DataError(f"the number of clips must be at least 1 (got {num_clips}); e.g. --num 2000 "
                        "(data.synthetic_num_clips).")
    out = Path(out_dir).resolve()
    _refuse_unless_replaceable(out)         # before the lock: a refusal writes nothing
    with generator_lock(out, log):
        _clean_stale_temps(out, log)
        return _generate(out, num_clips, seed, num_points, workers, progress)


def _generate(out: Path, num_clips, seed, num_points, workers, progress) -> Path:
    tmp = out.parent / f"{out.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    _write_manifest(tmp, dict(generator="cmdm.data.synthetic", fingerprint=FINGERPRINT, complete=False,
                              pid=os.getpid()))
    for sub in ("new_joint_vecs", "new_joints", "texts", "contacts"):
        (tmp / sub).mkdir()
    try:
        work = partial(_write_clip, root=tmp, seed=seed, num_points=num_points)
        workers = workers or os.cpu_count() or 1
        bar = tqdm(total=num_clips, disable=not progress, desc="synthetic clips", unit="clip")
        if workers == 1 or num_clips < 2:
            stats = []
            for i in range(num_clips):
                stats.append(work(i))
                bar.update()
        else:
            with multiprocessing.Pool(min(workers, num_clips)) as pool:
                stats = []
                for s in pool.imap(work, range(num_clips), chunksize=4):
                    stats.append(s)
                    bar.update()
        bar.close()

        splits = split_ids(num_clips, seed)
        for name, idx in splits.items():
            (tmp / f"{name}.txt").write_text("".join(f"{i:06d}\n" for i in idx))
        (tmp / "all.txt").write_text("".join(f"{i:06d}\n" for i in range(num_clips)))
        train = splits["train"] or list(range(num_clips))
        mean, std = _pooled_mean_std([stats[i] for i in train])
        np.save(tmp / "Mean.npy", mean.astype(np.float32))
        np.save(tmp / "Std.npy", humanml3d_std(std).astype(np.float32))

        counts = {f: 0 for f in FAMILIES}
        for s in stats:
            for f in s["families"]:
                counts[f] += 1
        frames = [s["frames"] for s in stats]
        meta = dict(generator="cmdm.data.synthetic", version=GENERATOR_VERSION, seed=int(seed),
                    num_clips=int(num_clips), num_points=int(num_points), fps=FPS,
                    feature_dim=sk.FEATURE_DIM, num_joints=sk.NUM_JOINTS,
                    splits={k: len(v) for k, v in splits.items()}, actions_per_family=counts,
                    frames=dict(min=min(frames), max=max(frames),
                                mean=round(float(np.mean(frames)), 2)),
                    licence="generated: procedurally synthesised by cmdm.data.synthetic, "
                            "no recorded motion or third-party data; same licence as this code")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        files, _ = _entries(tmp)
        listed = {rel: [(tmp / rel).stat().st_size, _sha256(tmp / rel)] for rel in files if rel != MANIFEST}
        _write_manifest(tmp, dict(generator="cmdm.data.synthetic", fingerprint=FINGERPRINT, complete=True,
                                  settings=_settings(num_clips, seed, num_points), files=listed))
        _refuse_unless_replaceable(out)     # again, under the lock: it may have changed meanwhile
        if out.exists():
            _remove_ours(out)
        tmp.rename(out)
    except BaseException:
        if tmp.exists():
            _remove_ours(tmp)
        raise
    return out


_VERIFIED: dict = {}   # folder -> (name, size, mtime_ns) of its files when this process last hashed them all


def ensure_dataset(out_dir, num_clips=2000, seed=0, num_points=1024, workers=None,
                   progress=True, log=None) -> Path:
    """Generate the dataset unless out_dir already holds a finished one with these settings, intact.

    Reuse is decided from the manifest, with every file's size and sha256 checked (a removed file
    means regenerate, a changed one or a foreign one means refuse): 1-2 s on the 2,000-clip set, once
    per process; a later call in the same process re-hashes only if a file's size or mtime moved."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    out = Path(out_dir).resolve()

    def ready() -> bool:
        if not out.is_dir() or out.is_symlink():
            return False
        found = dataset_problems(out, check_contents=False)
        manifest = found["manifest"]
        if manifest is None or manifest.get("settings") != _settings(num_clips, seed, num_points) or \
                found["foreign"] or found["changed"] or found["missing"]:
            return False
        stats = found["stats"]
        if _VERIFIED.get(out) == stats:     # hashed by this process already and untouched since
            return True
        if dataset_problems(out)["changed"]:
            return False
        _VERIFIED[out] = stats
        return True

    if ready():
        _clean_stale_temps(out, log, locked=False)   # a killed regeneration's leftovers (pid dead)
        return out
    if int(num_clips) < 1:
        raise DataError(f"data.synthetic_num_clips must be at least 1 (got {num_clips}).")
    _refuse_unless_replaceable(out)
    with generator_lock(out, log):
        if ready():                         # another process made it while we waited
            return out
        _refuse_unless_replaceable(out)
        _clean_stale_temps(out, log)
        if out.exists():
            missing = dataset_problems(out)["missing"]
            log(f"[synthetic] regenerating {out}" + (f": files were removed ({_first(missing)})" if missing else
                                                      " with other settings" if any(out.iterdir()) else ""))
        return _generate(out, num_clips, seed, num_points, workers, progress)


# ============================================================================= preview + CLI

def _render_one(args):
    from cmdm.viz import save_gif
    root, cid = args
    joints = np.load(root / "new_joints" / f"{cid}.npy")
    points = np.load(root / "contacts" / f"{cid}.npz")["points"]
    caption = (root / "texts" / f"{cid}.txt").read_text().splitlines()[0].split("#")[0]
    path = root / "preview" / f"{cid}.gif"
    save_gif(joints, path, title=caption, scene_points=points)
    return path


def render_previews(root, k, workers=None):
    """Stick-figure GIFs of k clips (different first actions where possible) -> their paths."""
    root = Path(root)
    ids = (root / "all.txt").read_text().split()
    seen, chosen = set(), []
    for cid in ids:                # one clip per leading verb, e.g. walk, sit, wave, ...
        tokens = (root / "texts" / f"{cid}.txt").read_text().split("#", 2)[1].split()
        verb = next((t for t in tokens if t.endswith("/VERB")), "")
        if verb not in seen:
            seen.add(verb)
            chosen.append(cid)
        if len(chosen) == k:
            break
    chosen += [c for c in ids if c not in chosen][:k - len(chosen)]
    (root / "preview").mkdir(exist_ok=True)
    jobs = [(root, c) for c in chosen]
    if (workers or os.cpu_count() or 1) > 1 and len(jobs) > 1:
        with multiprocessing.Pool(min(workers or os.cpu_count(), len(jobs))) as pool:
            return pool.map(_render_one, jobs)
    return [_render_one(j) for j in jobs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cmdm.data.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="dataset folder to (re)write")
    ap.add_argument("--num", type=int, default=2000, help="number of clips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", type=int, default=1024, help="scene points per clip")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    ap.add_argument("--preview", type=int, default=0, help="render K clips to DIR/preview/*.gif")
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error(f"--num must be at least 1 (got {args.num}): the number of clips to generate, e.g. --num 2000")
    if args.points < 1:
        ap.error(f"--points must be at least 1 (got {args.points}): scene points per clip, e.g. --points 1024")
    try:
        out = generate_dataset(args.out, args.num, args.seed, args.points, args.workers)
    except DataError as err:
        print(f"error: --out: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.num} clips to {out}")
    if args.preview:
        for path in render_previews(out, args.preview, args.workers):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

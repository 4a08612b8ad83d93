"""Channels -> joint positions: the upper body by composing local rotations, each leg by a two-bone IK onto
its footprint, the pelvis as high as the planted legs reach; then HumanML3D's per-chain quaternions and FK."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from cmdm import skeleton as sk
from cmdm.data.synthetic.body import (ANKLE, CH, ELBOW, KNEE, LEFT, NEUTRAL_DIRS, RIGHT, SHOULDER, TOE, WRIST,
                                      Body, arm)
from cmdm.data.synthetic.channels import FPS, GRAVITY, reach_limit, sgn
from cmdm.data.synthetic.rotations import qchain, rx, ry, rz


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
    sg = sgn(side)
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
        bone_frame.update({SHOULDER[s]: g13, ELBOW[s]: g16, WRIST[s]: g18})
        hip = body.hip_world(root, yaw, pitch, s)
        thigh, shank = _leg_ik(hip, feet[:, s], foot_yaw[:, s], body.thigh[s], body.shank[s])
        bone_frame.update({KNEE[s]: thigh, ANKLE[s]: shank,
                           TOE[s]: qchain(ry(foot_yaw[:, s]), rx(foot_pitch[:, s]))})

    # HumanML3D's FK rotates each bone's rest offset (RAW_OFFSETS) by the product of the
    # quaternions along its kinematic chain, starting from the root's. Our bone rotation is
    # frame * (rest direction -> neutral direction); the chain quaternions follow by division.
    align = sk.qbetween(sk.RAW_OFFSETS[1:], NEUTRAL_DIRS[1:])
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


def style_noise(upper, rng):
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

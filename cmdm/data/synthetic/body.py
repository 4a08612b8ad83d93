"""One performer (`Body`): the HumanML3D skeleton with bones scaled +-5 % and a personal neutral posture,
the joint indices of each limb, and the names of the upper-body animation channels."""
from __future__ import annotations

import numpy as np

from cmdm import skeleton as sk
from cmdm.data.synthetic.rotations import qchain, rx, ry

LEFT, RIGHT = 0, 1
SIDE_NAMES = ("left", "right")


# Bone directions (parent -> joint) of a relaxed standing pose, from the SMPL template with the
# arms lowered. The skeleton's own rest directions (RAW_OFFSETS) are axis-aligned and would
# put the head in front of the neck and the arms along the collars.
NEUTRAL_DIRS = np.array([
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
NEUTRAL_DIRS[1:] /= np.linalg.norm(NEUTRAL_DIRS[1:], axis=-1, keepdims=True)
_MIRROR_PAIRS = [(1, 2), (4, 5), (7, 8), (10, 11), (13, 14), (16, 17), (18, 19), (20, 21)]
HIP, KNEE, ANKLE, TOE = (1, 2), (4, 5), (7, 8), (10, 11)
SHOULDER, ELBOW, WRIST = (16, 17), (18, 19), (20, 21)

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
        self.bones = NEUTRAL_DIRS * self.lengths[:, None]
        self.thigh = self.lengths[list(KNEE)]
        self.shank = self.lengths[list(ANKLE)]
        self.leg = self.thigh + self.shank
        # A flat foot has its toe joint on the ground and the ankle this much higher.
        self.ankle_h = -self.bones[TOE[0], 1]
        self.half_width = abs(self.bones[HIP[0], 0]) + rng.uniform(0.005, 0.035)
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
        hip = self.bones[HIP[0]]
        dx = abs(hip[0]) - self.half_width
        self.stand_y = self.ankle_h - hip[1] + np.sqrt((0.97 * self.leg[0]) ** 2 - dx ** 2)

    def hip_world(self, root, yaw, pitch, side):
        """World position of a hip joint for pelvis position/heading/forward tilt (broadcasts)."""
        g0 = qchain(ry(yaw), rx(pitch))
        return root + sk.qrot(g0, np.broadcast_to(self.bones[HIP[side]], np.shape(root)))

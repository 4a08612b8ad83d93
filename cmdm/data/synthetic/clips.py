"""One clip, start to end: an action plan, built and posed, through HumanML3D's feature pipeline, with its
scene, contacts and captions."""
from __future__ import annotations

import numpy as np

from cmdm import skeleton as sk
from cmdm.data.synthetic.actions import Builder
from cmdm.data.synthetic.body import Body
from cmdm.data.synthetic.captions import FAMILIES, make_captions, tag_caption
from cmdm.data.synthetic.posing import pose_clip, style_noise
from cmdm.data.synthetic.scene import contact_distances, make_scene

MIN_T, MAX_T = 40, 200          # HumanML3D keeps 40 <= T < 200 feature rows


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
    channels["upper"] = style_noise(channels["upper"], rng)
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

"""The sixteen actions: a `Builder` strings 1-3 of them together, each writing one `Segment` of channels."""
from __future__ import annotations

import numpy as np

from cmdm.data.synthetic.body import CH, LEFT, RIGHT, TOE, UPPER, Body, arm
from cmdm.data.synthetic.channels import FPS, GRAVITY, Segment, reach_limit, sgn
from cmdm.data.synthetic.rotations import heading_vec, left_vec, minjerk


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
        return pos, yaw + sgn(side) * self.toe_out

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
            pos, fyaw = self.footprint(side, c + sgn(side) * b.half_width * left_vec(yk), yk)
            seg.swing(side, max(land[k] - swing, 1.0), land[k], pos, fyaw, clearance, toe)
            # Mid-swing of this foot = mid-stance of the other: the pelvis is over that foot.
            c0, y0 = at(s_foot[k - 1] if k > 0 else 0.0)
            t_mid = max(land[k] - swing / 2, 1.0 + 0.5 * k)
            pelvis.append((t_mid, c0 - sgn(side) * sway * left_vec(y0)))
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
            pos, fyaw = self.footprint(side, c + sgn(side) * b.half_width * left_vec(yk), yk)
            seg.swing(side, land[k] - swing, land[k], pos, fyaw, 0.05, 0.15)
            t_mid = land[k] - swing / 2
            ym = yaw0 + angle * min(1.0, (k + 0.6) / (n - 1))
            pelvis.append((t_mid, c - sgn(side) * 0.02 * left_vec(ym)))
            yaws.append((t_mid, ym))
        pelvis.append((land[-1] + 0.4 * P, c))
        yaws.append((land[-1] + 0.4 * P, yaw0 + angle))
        seg.path(pelvis, yaws)
        seg.root[:, 1] = self.stand_height()
        self.push(seg, "turn", p)

    def sidestep(self, p):
        """Step sideways: the leading foot steps out, the other closes in, `steps` times."""
        b, side = self.body, p["side"]
        sg, lead, trail = sgn(side), side, 1 - side
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
        lead, sg = p["lead"], sgn(p["lead"])
        fwd, lv, c = heading_vec(self.yaw), left_vec(self.yaw), self.center()
        toe = b.lengths[TOE[0]] * 0.95
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
                "spine_roll": [(r, -sgn(side) * 0.06), (t_end, -sgn(side) * 0.06)]}
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
            keys["spine_yaw"] += [(hit, -sgn(side) * 0.3), (back, 0.0)]
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

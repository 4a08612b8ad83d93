"""A clip's scene: a floor patch plus the furniture its actions used (chair, step box, table) as point clouds
placed from the final joints, and afford-motion's contact distances."""
from __future__ import annotations

import numpy as np

from cmdm.data.synthetic.body import WRIST
from cmdm.data.synthetic.rotations import facing_yaw, heading_vec, left_vec


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
        wrist = joints[f, WRIST[spec["side"]]]
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

"""Motions as stick figures: frames as plain uint8 arrays (for TensorBoard) and small GIFs.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so it
works headless and inside worker processes.
"""
from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cmdm.skeleton import KINEMATIC_CHAIN

LEFT_COLOR, RIGHT_COLOR, CENTER_COLOR = "#1f6fd1", "#d1361f", "#333333"


def _chain_color(chain):
    """Left limbs blue, right limbs red, spine and head dark (joint 1/13 = left hip/collar)."""
    if chain[1] in (1, 13):
        return LEFT_COLOR
    if chain[1] in (2, 14):
        return RIGHT_COLOR
    return CENTER_COLOR


def render_motion_frames(joints, title: str = "", scene_points=None, every: int = 1,
                         size: int = 320, view=(20, -60)) -> np.ndarray:
    """Render joints (T, 22, 3) (y up) as a 3D stick figure -> uint8 frames (F, size, size, 3).

    The camera keeps its angle and follows the pelvis horizontally; scene points (N, >=3) and
    the root path are drawn faintly, so the motion shows against the floor. view = (elevation,
    azimuth) in degrees; the default looks at a body facing +z from its front right."""
    joints = np.asarray(joints, np.float64)[::max(1, int(every))]
    fig = Figure(figsize=(size / 100, size / 100), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 0.88 if title else 1.0), projection="3d")
    ax.set_proj_type("ortho")
    ax.view_init(elev=view[0], azim=view[1])
    # plot axes (x, -z, y): plot-z is up and the frame stays right-handed (not mirrored)
    xs, zs, ys = joints[..., 0], -joints[..., 2], joints[..., 1]
    pts = None if scene_points is None else np.asarray(scene_points, np.float64)[:, :3]
    # The camera follows the pelvis horizontally (a fixed-size window), so long walks stay big.
    half = max(ys.max() + 0.1, 1.8) / 2
    ax.set_zlim(0, 2 * half)
    ax.set_box_aspect((1, 1, 1), zoom=1.45)
    ax.set_axis_off()
    if pts is not None:
        pts = pts[:: max(1, len(pts) // 600)]            # a faint hint is enough (GIF size)
        floor = pts[:, 1] < 0.01
        ax.scatter(pts[floor, 0], -pts[floor, 2], pts[floor, 1], s=0.5, c="#999999",
                   alpha=0.3, depthshade=False)
        ax.scatter(pts[~floor, 0], -pts[~floor, 2], pts[~floor, 1], s=1.5, c="#8a6d3b",
                   alpha=0.5, depthshade=False)
    else:
        g = np.arange(np.floor(xs.min()) - 2, np.ceil(xs.max()) + 3, 0.5)
        h = np.arange(np.floor(zs.min()) - 2, np.ceil(zs.max()) + 3, 0.5)
        for v in g:
            ax.plot([v, v], [h[0], h[-1]], [0, 0], c="#cccccc", lw=0.5)
        for v in h:
            ax.plot([g[0], g[-1]], [v, v], [0, 0], c="#cccccc", lw=0.5)
    ax.plot(xs[:, 0], zs[:, 0], np.zeros(len(xs)), c="#7a7a7a", lw=0.8, alpha=0.6)
    if title:
        fig.text(0.5, 0.99, "\n".join(textwrap.wrap(title, 48)[:3]), ha="center", va="top",
                 fontsize=7)
    lines = [ax.plot([], [], [], c=_chain_color(c), lw=2.0, solid_capstyle="round")[0]
             for c in KINEMATIC_CHAIN]
    frames = []
    for t in range(len(joints)):
        for line, chain in zip(lines, KINEMATIC_CHAIN):
            line.set_data_3d(xs[t, chain], zs[t, chain], ys[t, chain])
        ax.set_xlim(xs[t, 0] - half, xs[t, 0] + half)
        ax.set_ylim(zs[t, 0] - half, zs[t, 0] + half)
        canvas.draw()
        frames.append(np.asarray(canvas.buffer_rgba())[..., :3].copy())
    return np.stack(frames)


def save_gif(joints, path, title: str = "", scene_points=None, fps: int = 20, every: int = 2,
             size: int = 320) -> Path:
    """Write a looping GIF of the motion (every `every`-th frame), atomically (temp + rename)."""
    from PIL import Image
    frames = render_motion_frames(joints, title, scene_points, every, size)
    images = [Image.fromarray(f).quantize(colors=32, method=Image.Quantize.MEDIANCUT)
              for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gif", dir=path.parent)
    os.close(fd)
    try:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=int(round(1000 * every / fps)), optimize=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path

"""The stick-figure renderer (cmdm/viz.py): its camera is matplotlib's orthographic view_init camera (checked
against matplotlib's own projection), and the limbs land on the image where that camera puts them."""
import numpy as np
import pytest

from cmdm.data import synthetic as syn
from cmdm.viz import CENTER_COLOR, LEFT_COLOR, RIGHT_COLOR, camera_axes, plot_coords, render_motion_frames


@pytest.mark.parametrize("view", [(20, -60), (0, 0), (35, 120), (-10, 200)])
def test_the_camera_is_matplotlibs_orthographic_view(view):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import proj3d
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    ax.set_proj_type("ortho")
    ax.view_init(elev=view[0], azim=view[1])
    ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
    ax.set_box_aspect((1, 1, 1))
    points = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    mx, my, _ = proj3d.proj_transform(*points.T, ax.get_proj())
    ours = points @ camera_axes(*view)[:2].T
    theirs = np.stack([mx, my], axis=1)
    ours, theirs = ours - ours.mean(0), theirs - theirs.mean(0)
    scale = (ours * theirs).sum() / (ours ** 2).sum()            # one uniform scale: no flip, no rotation
    assert scale > 0
    np.testing.assert_allclose(scale * ours, theirs, atol=1e-9 * np.abs(theirs).max() + 1e-12)


def _pixels_of(frame, color):
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return np.argwhere(np.abs(frame.astype(int) - rgb).sum(-1) < 40)


def test_limbs_are_drawn_where_the_camera_puts_them():
    clip = syn.generate_clip(0, 1, num_points=64)
    joints = clip["joints"][:1]
    frame = render_motion_frames(joints, "a person stands", size=160)[0]
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8
    left, right = _pixels_of(frame, LEFT_COLOR), _pixels_of(frame, RIGHT_COLOR)
    assert len(left) > 20 and len(right) > 20
    screen_x = plot_coords(joints[0]) @ camera_axes(20, -60)[0]
    left_x, right_x = screen_x[[16, 18, 20, 1, 4, 7]].mean(), screen_x[[17, 19, 21, 2, 5, 8]].mean()
    # the left limbs' pixels lie to the same side of the right limbs' as the camera projects them
    assert np.sign(left[:, 1].mean() - right[:, 1].mean()) == np.sign(left_x - right_x)
    # the head is above the feet on the image (rows grow downwards)
    head_rows = _pixels_of(frame, CENTER_COLOR)[:, 0]
    assert head_rows.min() < min(left[:, 0].max(), right[:, 0].max())

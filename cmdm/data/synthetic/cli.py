"""`python -m cmdm.data.synthetic`: write the dataset, and with --preview stick-figure GIFs of a few clips.

    python -m cmdm.data.synthetic --out data/synthetic [--num 2000 --seed 0 --points 1024
                                                         --workers W --preview 6]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np

from cmdm.data.humanml3d import DataError
from cmdm.data.synthetic.writer import generate_dataset

DESCRIPTION = "A procedural text-motion-scene dataset in HumanML3D's layout, plus afford-motion contact maps."


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
    ap = argparse.ArgumentParser(prog="python -m cmdm.data.synthetic", description=DESCRIPTION)
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

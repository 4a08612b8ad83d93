"""Does the evaluator see what a person sees? FID and Top-1 of real test motions after visible corruptions.

    python -m cmdm.evaluation.sanity --evaluator DIR --data DIR [--clips N] [--seed S]
    python -m cmdm.evaluation.sanity --config CONFIG.yaml [key=value ...]   # the paths a config names

A metric that picks models must move when a motion gets visibly worse. Each row corrupts the real test
motions (as the fit's quality table embeds them: the first caption, the clip from frame 0 cropped to a
multiple of 4 frames, at most 196) and reports FID against the real TRAIN motions and R-precision Top-1
with the clips' own captions (batches of 32, averaged over 10 random batchings; chance = 1/32).

Every corruption is applied in joint space (metres): the features are turned into joints with
`recover_from_ric` (plus the one frame the last velocity row implies, so a clip of T feature rows is T+1
frames of joints), corrupted, canonicalised as HumanML3D does (floor, origin, facing +z at frame 0) and
turned back into 263-d features with the project's own `extract_features`, so that velocities, rotations
and foot contacts are those of the corrupted joints.

  clean             the test motions as stored (no round trip).
  round trip        joints -> features with no corruption: shows the conversion itself costs nothing.
  jitter S m        i.i.d. Gaussian noise of standard deviation S metres on every coordinate of every
                    joint of every frame (S = 0.01, 0.03, 0.1).
  foot sliding      the whole body drifts horizontally at 0.5 m/s (one random direction per clip) on
                    every frame step on which a foot is planted (a foot joint moves < sqrt(0.002) m, the
                    contact rule of extract_features): planted feet skate 2.5 cm per frame while the
                    pose is unchanged, the foot-skating artefact of generated motion.
  frozen pose       the first frame held for the whole clip (root still: no motion at all).
  time reversal     the frames in reverse order.
  shuffled segments the clip cut into 4 equal segments put in a random non-identity order; each segment
                    is moved horizontally to start where the previous one ends (no teleport, but the pose
                    and facing jump at every cut).
  captions swapped  clean motions, each paired with another test clip's caption (a random derangement):
                    Top-1 should fall to chance; FID is the clean one.

Goals (issue 13, item 7): FID strictly increases with the jitter sigma, jitter 0.03 m at least triples
the clean FID, every corruption at least doubles it, and swapped captions bring Top-1 within 2x of chance.
`check_goals` says which hold. Seeds are fixed (`seed`, default 0): the same evaluator and data give the
same table.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from cmdm import skeleton
from cmdm.atomic import atomic_write_text
from cmdm.checkpoint_file import CheckpointError
from cmdm.config import ConfigError, load_config
from cmdm.data.humanml3d import DataError, MotionDataset
from cmdm.evaluation import metrics
from cmdm.evaluation.evaluator import (CHECKPOINT_CANDIDATES, EVALUATOR_FILE, load_fitted_evaluator,
                                       load_official_evaluator)
from cmdm.evaluation.word_vectorizer import VocabularyError

FPS = 20
JITTER_SIGMAS = (0.01, 0.03, 0.1)            # metres
SLIDE_SPEED = 0.5                            # metres per second of drift while a foot is planted
NUM_SEGMENTS = 4
BATCH = 32                                   # R-precision batch (chance Top-1 = 1 / BATCH)
ROWS = ("clean", "round trip", *(f"jitter {s} m" for s in JITTER_SIGMAS), "foot sliding", "frozen pose",
        "time reversal", "shuffled segments", "captions swapped")


# ----------------------------------------------------------------------------
# Features <-> joints
# ----------------------------------------------------------------------------

def features_to_joints(features: np.ndarray) -> np.ndarray:
    """(T, 263) features -> (T + 1, 22, 3) joints in metres; frame T is rebuilt from the last velocity row."""
    f = np.asarray(features, np.float64)
    joints = skeleton.recover_from_ric(f)
    r_rot, _ = skeleton.recover_root_rot_pos(f)
    vel = f[-1, skeleton.LOCAL_VEL].reshape(skeleton.NUM_JOINTS, 3)
    last = joints[-1] + skeleton.qrot(skeleton.qinv(r_rot[-1]), vel)
    return np.concatenate([joints, last[None]])


def joints_to_features(joints: np.ndarray) -> np.ndarray:
    """(T + 1, 22, 3) joints -> (T, 263) features, canonicalised first as HumanML3D does."""
    return skeleton.extract_features(skeleton.canonicalize(np.asarray(joints, np.float64)))


# ----------------------------------------------------------------------------
# Corruptions of one clip's joints (T + 1, 22, 3) -> (T + 1, 22, 3)
# ----------------------------------------------------------------------------

def jitter(joints, rng, sigma: float):
    return joints + sigma * rng.standard_normal(joints.shape)


def foot_sliding(joints, rng, speed: float = SLIDE_SPEED):
    planted = skeleton.feet_contacts(joints).any(1)             # (T,) a foot is planted on step t -> t+1
    angle = rng.uniform(0, 2 * np.pi)
    step = speed / FPS * np.array([np.cos(angle), 0.0, np.sin(angle)])
    drift = np.concatenate([[0.0], np.cumsum(planted)])[:, None] * step   # (T + 1, 3)
    return joints + drift[:, None, :]


def frozen_pose(joints, rng):
    return np.repeat(joints[:1], len(joints), axis=0)


def time_reversal(joints, rng):
    return joints[::-1].copy()


def shuffled_segments(joints, rng, segments: int = NUM_SEGMENTS):
    parts = np.array_split(joints, segments)
    order = np.arange(segments)
    while (order == np.arange(segments)).all():
        order = rng.permutation(segments)
    out = [parts[order[0]]]
    for k in order[1:]:
        seg = parts[k].copy()
        shift = out[-1][-1, 0] - seg[0, 0]
        seg[..., [0, 2]] += shift[[0, 2]]
        out.append(seg)
    return np.concatenate(out)


CORRUPTIONS = {
    "round trip": lambda j, rng: j,
    **{f"jitter {s} m": (lambda j, rng, s=s: jitter(j, rng, s)) for s in JITTER_SIGMAS},
    "foot sliding": foot_sliding,
    "frozen pose": frozen_pose,
    "time reversal": time_reversal,
    "shuffled segments": shuffled_segments,
}


def corrupt(name: str, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One clip's (T, 263) raw features with corruption `name` applied in joint space -> (T, 263) float32."""
    return joints_to_features(CORRUPTIONS[name](features_to_joints(features), rng)).astype(np.float32)


def corrupt_jitter(features: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """`corrupt` with joint jitter of any sigma (metres): what the evaluator fit uses for its negatives."""
    return joints_to_features(jitter(features_to_joints(features), rng, sigma)).astype(np.float32)


# ----------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------

def crop(motion: np.ndarray, unit: int = 4, max_frames: int = 196) -> np.ndarray:
    """From frame 0, the longest multiple of `unit` frames (at most max_frames), as the fit's quality table."""
    return motion[:min(len(motion), max_frames) // unit * unit]


def embed_clips(ev, clips: list[np.ndarray]) -> np.ndarray:
    """Raw (T_i, 263) clips -> (N, D) motion embeddings (zero-padded batch, lengths = T_i)."""
    lengths = np.array([len(c) for c in clips])
    raw = np.zeros((len(clips), lengths.max(), clips[0].shape[1]), np.float32)
    for i, c in enumerate(clips):
        raw[i, :len(c)] = c
    return ev.embed_motion(raw, lengths)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2)."""
    while True:
        p = rng.permutation(n)
        if (p != np.arange(n)).all():
            return p


def mean_top1(text_emb, motion_emb, rng, shuffles: int = 10) -> float:
    """R-precision Top-1 (metrics.r_precision, batches of 32) averaged over `shuffles` random batchings."""
    return float(np.mean([metrics.r_precision(text_emb[p], motion_emb[p], batch_size=BATCH)["top1"]
                          for p in (rng.permutation(len(text_emb)) for _ in range(shuffles))]))


def sanity_table(ev, train_motions, test_motions, test_tokens, seed: int = 0, max_clips: int | None = None,
                 shuffles: int = 10) -> dict:
    """{row: {'fid', 'fid_ratio' (to clean), 'top1'}} plus 'chance_top1', 'num_test', 'num_train'.

    train_motions/test_motions: raw (T, 263) clips; test_tokens: one token list (`word/POS`) per test clip.
    max_clips: use at most this many test clips (a fixed random subset), to bound the time on big splits.
    """
    if len(test_motions) < BATCH:
        raise ValueError(f"the sanity table needs at least {BATCH} test clips, got {len(test_motions)}")
    rng = np.random.default_rng(seed)
    unit, max_frames = ev.sizes.unit_length, ev.sizes.max_motion_length
    keep = np.arange(len(test_motions))
    if max_clips is not None and max_clips < len(keep):
        keep = np.sort(rng.choice(len(keep), max(BATCH, max_clips), replace=False))
    test = [crop(test_motions[i], unit, max_frames) for i in keep]
    text = ev.embed_text([list(test_tokens[i]) for i in keep])
    m_train = embed_clips(ev, [crop(m, unit, max_frames) for m in train_motions])
    m_clean = embed_clips(ev, test)

    rows = {"clean": (metrics.fid(m_clean, m_train), mean_top1(text, m_clean, rng, shuffles))}
    for name in CORRUPTIONS:
        crng = np.random.default_rng([seed, ROWS.index(name)])   # each row its own stream: rows are independent
        m = embed_clips(ev, [corrupt(name, c, crng) for c in test])
        rows[name] = (metrics.fid(m, m_train), mean_top1(text, m, rng, shuffles))
    swapped = text[derangement(len(text), rng)]
    rows["captions swapped"] = (rows["clean"][0], mean_top1(swapped, m_clean, rng, shuffles))
    clean = rows["clean"][0]
    table = {name: {"fid": fid, "fid_ratio": fid / clean if clean > 0 else float("inf"), "top1": top1}
             for name, (fid, top1) in ((n, rows[n]) for n in ROWS)}
    table.update(chance_top1=1.0 / BATCH, num_test=len(test), num_train=len(m_train), seed=seed)
    return table


def check_goals(table: dict) -> list[tuple[str, bool]]:
    """The issue's goals, each (statement, holds)."""
    fid = {k: v["fid"] for k, v in table.items() if isinstance(v, dict)}
    jit = [fid[f"jitter {s} m"] for s in JITTER_SIGMAS]
    corrupted = [k for k in CORRUPTIONS if k != "round trip"]
    chance = table["chance_top1"]
    return [
        ("FID strictly increases with the jitter sigma", all(a < b for a, b in zip(jit, jit[1:]))),
        ("jitter 0.03 m at least triples the clean FID", fid["jitter 0.03 m"] >= 3 * fid["clean"]),
        ("every corruption at least doubles the clean FID", all(fid[k] >= 2 * fid["clean"] for k in corrupted)),
        ("swapped captions: Top-1 within 2x of chance", table["captions swapped"]["top1"] <= 2 * chance),
    ]


def format_sanity(table: dict) -> str:
    lines = ["| corrupted test motions | FID vs train | x clean | Top-1 |", "|---|---|---|---|"]
    for name in ROWS:
        r = table[name]
        lines.append(f"| {name} | {r['fid']:.3f} | {r['fid_ratio']:.2f} | {r['top1']:.3f} |")
    lines.append(f"{table['num_test']} test clips vs {table['num_train']} train clips, seed {table['seed']}; "
                 f"chance Top-1 = {table['chance_top1']:.4f}")
    lines += [f"  [{'ok' if ok else 'FAILS'}] {goal}" for goal, ok in check_goals(table)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------

def _load(args):
    """(evaluator, data root, min_len, max_len) from --evaluator/--data or a config; errors as SanityError."""
    min_len, max_len = 40, 200
    if args.config is not None or args.overrides:
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as err:
            raise SanityError(str(err)) from None
        official = cfg.data.name == "humanml3d"
        evaluator_dir = Path(args.evaluator or cfg.evaluation.evaluator_dir)
        data_root = Path(args.data or cfg.data.root)
        glove_dir = args.glove or cfg.evaluation.glove_dir
        min_len, max_len = cfg.data.min_motion_len, cfg.data.max_motion_len
    else:
        if args.evaluator is None or args.data is None:
            raise SanityError("pass --evaluator DIR and --data DIR (or --config CONFIG.yaml to take both from a "
                              "config's evaluation.evaluator_dir and data.root).")
        evaluator_dir, data_root, glove_dir = Path(args.evaluator), Path(args.data), args.glove
        official = evaluator_dir.is_dir() and any((evaluator_dir / c).is_file() for c in CHECKPOINT_CANDIDATES)
    if not data_root.is_dir():
        raise SanityError(f"dataset folder {data_root} does not exist: pass --data (or data.root) pointing at a "
                          "HumanML3D-layout folder (train.txt, test.txt, new_joint_vecs/, texts/); the demo set is "
                          "made by `python -m cmdm.data.synthetic --out DIR`.")
    if official:
        if glove_dir is None:
            raise SanityError(f"{evaluator_dir} holds the official evaluator (finest.tar): pass --glove DIR with "
                              "its word vectors (our_vab_data.npy, our_vab_words.pkl, our_vab_idx.pkl).")
        return load_official_evaluator(evaluator_dir, glove_dir), data_root, min_len, max_len
    path = evaluator_dir if evaluator_dir.suffix == ".pt" else evaluator_dir / EVALUATOR_FILE
    if not path.is_file():
        raise SanityError(f"no evaluator at {path}: fit one with `python -m cmdm.evaluation.fit --data "
                          f"{data_root} --out {evaluator_dir}` (or pass --evaluator pointing at a folder with "
                          "evaluator.pt, or the official evaluator's folder with finest.tar and --glove).")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = load_fitted_evaluator(path, data_root=data_root)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return ev, data_root, min_len, max_len


class SanityError(Exception):
    """Bad input of the sanity command: the message names the path and the fix."""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cmdm.evaluation.sanity", description=__doc__.split("\n")[0])
    p.add_argument("--evaluator", help="folder with evaluator.pt (fitted) or finest.tar (official), or the .pt file")
    p.add_argument("--data", help="HumanML3D-layout dataset folder (its train and test splits are used)")
    p.add_argument("--glove", help="GloVe folder of the official evaluator")
    p.add_argument("--config", help="take evaluation.evaluator_dir, evaluation.glove_dir and data.root from a config")
    p.add_argument("--clips", type=int, default=None, help="at most this many test clips (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the table to this JSON file")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (with --config)")
    args = p.parse_args(argv)

    try:
        ev, root, min_len, max_len = _load(args)
        split = lambda name: MotionDataset(root, name, min_motion_len=min_len, max_motion_len=max_len,  # noqa: E731
                                           use_contacts=False, train=False, progress=False)
        train, test = split("train"), split("test")
        table = sanity_table(ev, [e.motion for e in train.entries], [e.motion for e in test.entries],
                             [e.captions[0].tokens for e in test.entries], seed=args.seed, max_clips=args.clips)
    except (SanityError, DataError, CheckpointError, VocabularyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"evaluator {ev.source}, data {root}")
    print(format_sanity(table))
    if args.json:
        atomic_write_text(args.json, json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

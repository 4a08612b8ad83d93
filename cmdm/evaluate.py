"""Score a CMDM with the text-motion evaluator: generate for test captions, embed, compute the table.

    python -m cmdm.evaluate CHECKPOINT [--config CFG] [--samples N] [--sampler ddim|ddpm] [--steps S]
                            [--guidance G] [--replications R] [--mm] [--out results.json]

The command only: generation, embedding and scoring live in `cmdm.evaluation.generate` (which the training
loop uses too), the metric maths in `cmdm.evaluation.metrics`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cmdm.atomic import atomic_write_text
from cmdm.cli import number
from cmdm.data.humanml3d import dataset_from_config
from cmdm.evaluation.generate import (embed_generations, eval_indices, format_table, gt_row, load_for_evaluation,
                                     score)

# ----------------------------------------------------------------------------
# Table and CLI
# ----------------------------------------------------------------------------

def check_device(name: str) -> str | None:
    """None when torch can use device `name` here, else the problem and the fix."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"--device {name}: not a torch device; use cpu, cuda or cuda:N."
    if device.type == "cuda" and not torch.cuda.is_available():
        return (f"--device {name}: this machine has no CUDA device torch can use (torch.cuda.is_available() is "
                "False); use --device cpu.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        return f"--device {name}: there are {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:N-1."
    return None


def check_out(out: Path) -> str | None:
    """None when the results can be written to `out` (its folder exists: none is created), else the problem."""
    if out.is_dir():
        return f"--out {out} is a folder; give a file name for the results, e.g. {out / 'results.json'}."
    if not out.parent.is_dir():
        return (f"--out {out}: its folder {out.parent} does not exist (no folder is created for it); create "
                "the folder first, or give a file in an existing folder.")
    return None


def check_against_config(args, cfg) -> str | None:
    """The flags that depend on the checkpoint's config: None when they fit, else the problem and the fix."""
    if args.steps is not None and args.steps > cfg.diffusion.steps:
        return (f"--steps {args.steps}: the model was trained with diffusion.steps = {cfg.diffusion.steps}; "
                f"give --steps from 1 to {cfg.diffusion.steps}.")
    if args.samples is not None and args.samples < cfg.evaluation.batch_size:
        return (f"--samples {args.samples}: R-precision needs at least one batch of evaluation.batch_size = "
                f"{cfg.evaluation.batch_size} test items; give --samples {cfg.evaluation.batch_size} or more "
                f"(or lower evaluation.batch_size=...).")
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cmdm.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--config", help="config YAML (needed for raw afford-motion state dicts)")
    p.add_argument("--samples", type=number(int, 1), default=None, help="test items per replication (default: all)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None)
    p.add_argument("--steps", type=number(int, 1), default=None, help="DDIM steps (default: evaluation.ddim_steps)")
    p.add_argument("--eta", type=number(float, 0.0, 1.0), default=None)
    p.add_argument("--guidance", type=number(float, 0.0), default=None)
    p.add_argument("--replications", type=number(int, 1), default=None)
    p.add_argument("--mm", action="store_true", help="also MultiModality (30 generations per caption, 100 captions)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--out", help="JSON file for the results (default: next to the checkpoint)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", default=[], help="key=value config overrides")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
    problem = check_device(args.device) or (check_out(out) if args.out else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    from cmdm.config import ConfigError
    from cmdm.data.humanml3d import DataError
    from cmdm.data.synthetic.writer import ensure_dataset
    from cmdm.evaluation.evaluator import load_evaluator
    from cmdm.evaluation.fit import prepare_evaluator
    from cmdm.evaluation.metrics import replications_summary
    from cmdm.evaluation.word_vectorizer import VocabularyError
    from cmdm.model.checkpoint import CheckpointError
    try:
        cfg, model, diffusion = load_for_evaluation(args.checkpoint, args.config, args.overrides, args.device)
    except (DataError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    try:   # from here on, a CheckpointError is about the evaluator's files
        problem = check_against_config(args, cfg)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        from cmdm.model.text import check_config_text_model
        check_config_text_model(cfg, use_cache=args.split in ("train", "test"))  # the cache holds train/test captions
        # the cheaper check first: the official evaluator's files are looked up in a moment, while the
        # evaluator of a synthetic / custom set may have to be fitted (minutes) after its data is read
        if cfg.data.name == "humanml3d":
            evaluator = load_evaluator(cfg, device=args.device)
        if cfg.data.name == "synthetic":   # the embedded set is regenerated (deterministic) if it is not there
            ensure_dataset(cfg.data.root, num_clips=cfg.data.synthetic_num_clips, seed=cfg.data.synthetic_seed,
                           num_points=cfg.data.synthetic_num_points)
        split = dataset_from_config(cfg.data, args.split, train=False, progress=False)   # its files, up front
        if len(split) < cfg.evaluation.batch_size:
            print(f"error: --split {args.split}: {Path(cfg.data.root) / (args.split + '.txt')} yields {len(split)} "
                  f"clips, fewer than one R-precision batch (evaluation.batch_size = {cfg.evaluation.batch_size}); "
                  "evaluate on a larger split (--split test) or lower evaluation.batch_size=...", file=sys.stderr)
            return 2
        if cfg.data.name != "humanml3d":
            prepare_evaluator(cfg)            # this command is its own driver: it fits the evaluator if needed
            evaluator = load_evaluator(cfg, device=args.device)
    except (CheckpointError, VocabularyError) as err:
        print(f"error: evaluation.evaluator_dir / evaluation.glove_dir: {err}", file=sys.stderr)
        return 2
    except (DataError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    ev = cfg.evaluation
    sampler = args.sampler or ev.sampler
    steps = None if sampler == "ddpm" else (ev.ddim_steps if args.steps is None else args.steps)
    guidance = ev.guidance_scale if args.guidance is None else args.guidance
    eta = ev.ddim_eta if args.eta is None else args.eta
    reps = ev.replications if args.replications is None else args.replications
    num = 10**9 if args.samples is None else args.samples

    rows = {"ground truth": [], "model": []}
    t0 = time.time()
    for r in tqdm(range(reps), desc="replications", disable=reps == 1):
        ds = dataset_from_config(cfg.data, args.split, train=False, seed=r, progress=False)
        ds_b = dataset_from_config(cfg.data, args.split, train=False, seed=r + 10_000, progress=False)
        idx = eval_indices(ds, num, seed=r)
        rng = np.random.default_rng(r)
        emb = embed_generations(model, diffusion, ds, idx, evaluator, sampler=sampler, steps=steps, eta=eta,
                                guidance_scale=guidance, batch_size=ev.batch_size, seed=r, progress=True)
        if args.mm:
            mm_idx = idx[:100]
            mm = embed_generations(model, diffusion, ds, mm_idx, evaluator, sampler=sampler, steps=steps, eta=eta,
                                   guidance_scale=guidance, batch_size=ev.batch_size, seed=r + 777,
                                   mm_repeats=29, progress=True)
            emb["mm"] = mm["mm"]
        real_b = {"real": evaluator.embed_motion(*_real_batch(ds_b, idx))}
        rows["model"].append(score(emb, rng, ev.batch_size))
        rows["ground truth"].append(gt_row(emb, real_b, rng, ev.batch_size))
    seconds = time.time() - t0
    summary = {name: replications_summary(r) for name, r in rows.items()}
    print(format_table(summary))
    print(f"{len(idx)} test items x {reps} replication(s), sampler {sampler}"
          f"{'' if steps is None else f' {steps} steps'}, guidance {guidance}: {seconds:.1f} s")
    result = {"checkpoint": str(args.checkpoint), "sampler": sampler, "steps": steps, "guidance": guidance,
              "replications": reps, "num_samples": len(idx), "seconds": seconds,
              "rows": {n: {k: {"mean": m, "half_width": h} for k, (m, h) in s.items()} for n, s in summary.items()}}
    atomic_write_text(out, json.dumps(result, indent=2))
    print(f"results: {out}")
    return 0


def _real_batch(dataset, indices):
    items = [dataset[i] for i in indices]
    motion = dataset.denormalize(torch.stack([it["motion"] for it in items]))
    return motion, torch.tensor([it["length"] for it in items])


if __name__ == "__main__":
    sys.exit(main())

"""Evaluation cost vs quality of the samplers: FID / Top1 and wall time for DDIM at 25/50/100 steps and full
DDPM, on one checkpoint, the same test items and the same evaluator, in one run.

    python bench/bench_sampler.py outputs/CMDM-Demo/checkpoints/model_best.pt [--samples 128] [--ddim 25 50 100]

Goal (evaluation issue): DDIM-50 within 5% of DDPM's FID at <= 1/20 of its time. Not a test.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--ddim", type=int, nargs="*", default=[25, 50, 100])
    p.add_argument("--no-ddpm", action="store_true")
    args = p.parse_args()

    from cmdm.data.humanml3d import dataset_from_config
    from cmdm.evaluation.generate import embed_generations, eval_indices, load_for_evaluation, score
    from cmdm.evaluation.evaluator import load_evaluator
    from cmdm.prepare import prepare
    cfg, model, diffusion = load_for_evaluation(args.checkpoint, None)
    prepare(cfg)
    evaluator = load_evaluator(cfg)
    ds = dataset_from_config(cfg.data, "test", train=False, seed=0, progress=False)
    idx = eval_indices(ds, args.samples, seed=0)
    runs = [("ddim", s) for s in args.ddim] + ([] if args.no_ddpm else [("ddpm", None)])
    rows = []
    for sampler, steps in runs:
        t0 = time.time()
        emb = embed_generations(model, diffusion, ds, idx, evaluator, sampler=sampler, steps=steps,
                                batch_size=cfg.evaluation.batch_size, seed=0, progress=True)
        seconds = time.time() - t0
        m = score(emb, rng=np.random.default_rng(0))
        rows.append((f"{sampler}-{steps or diffusion.num_timesteps}", m["fid"], m["top1"], seconds))
        print(f"{rows[-1][0]:>10}: FID {m['fid']:.4f} Top1 {m['top1']:.4f} {seconds:.1f} s", flush=True)
    ref = rows[-1] if not args.no_ddpm else None
    print(f"\n{args.samples} test items, torch threads {torch.get_num_threads()}")
    print(f"{'sampler':>10} {'FID':>9} {'Top1':>7} {'seconds':>9}" + ("  FID/DDPM  time/DDPM" if ref else ""))
    for name, fid, top1, sec in rows:
        extra = f"  {fid / ref[1]:8.3f}  {sec / ref[3]:9.4f}" if ref else ""
        print(f"{name:>10} {fid:9.4f} {top1:7.4f} {sec:9.1f}{extra}")


if __name__ == "__main__":
    main()

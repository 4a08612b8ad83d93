"""Score a CMDM with the text-motion evaluator: generate for test captions, embed, compute the table.

    python -m cmdm.evaluate CHECKPOINT [--config CFG] [--samples N] [--sampler ddim|ddpm] [--steps S]
                            [--guidance G] [--replications R] [--mm] [--out results.json]

`embed_generations` is the piece the training loop calls every N epochs (each Ray worker embeds its
shard of the test items; the loop gathers them before `score`). The metric maths lives in
`cmdm.evaluation.metrics` and knows nothing of the model.
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
from cmdm.data.humanml3d import collate

TABLE_KEYS = ("top1", "top2", "top3", "fid", "mm_dist", "diversity", "multimodality")


@torch.no_grad()
def embed_generations(model, diffusion, dataset, indices, evaluator, *, sampler="ddim", steps=50, eta=0.0,
                      guidance_scale=1.0, batch_size=32, seed=0, mm_repeats=0, progress=False) -> dict:
    """Generate one motion per test item in `indices` and embed captions, generations and real motions.

    Returns arrays in the order of `indices`: `index`, `text` (N, D), `motion` (N, D), `real` (N, D),
    `mm` (N, mm_repeats, D) when mm_repeats > 0 (extra generations per caption for MultiModality), and
    `sample`: the first generation as raw features with its caption, for pictures.
    Noise is seeded from (seed, first index of each batch), so results do not depend on how the
    indices are sharded over workers.
    """
    model.eval()
    device = model.device
    out = {"index": [], "text": [], "motion": [], "real": [], "mm": []}
    sample = None
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    for chunk in tqdm(chunks, desc="evaluating", disable=not progress, leave=False):
        batch = collate([dataset[i] for i in chunk])
        mask, lengths = batch["mask"].to(device), batch["length"]
        cond = model.encode_batch(batch)
        generations = []
        for r in range(1 + mm_repeats):
            gen = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + int(chunk[0]) * 101 + r)
            x0 = diffusion.sample(model, cond, mask, sampler=sampler, steps=steps, eta=eta,
                                  guidance_scale=guidance_scale, progress=False, generator=gen)
            generations.append(dataset.denormalize(x0.float().cpu()))
        out["index"].append(np.asarray(chunk))
        out["text"].append(evaluator.embed_text(batch["tokens"], batch["text"]))
        out["motion"].append(evaluator.embed_motion(generations[0], lengths))
        out["real"].append(evaluator.embed_motion(dataset.denormalize(batch["motion"]), lengths))
        if mm_repeats:
            out["mm"].append(np.stack([evaluator.embed_motion(g, lengths) for g in generations], axis=1))
        if sample is None:
            n = int(lengths[0])
            sample = {"features": generations[0][0, :n].numpy(), "text": batch["text"][0],
                      "real": dataset.denormalize(batch["motion"][0, :n]).numpy()}
    result = {k: np.concatenate(v) for k, v in out.items() if v}
    result["sample"] = sample
    return result


def merge_shards(shards: list[dict]) -> dict:
    """Gathered per-worker outputs of `embed_generations` -> one dict sorted by test index."""
    keys = [k for k in shards[0] if k != "sample"]
    merged = {k: np.concatenate([s[k] for s in shards if len(s.get("index", []))]) for k in keys}
    order = np.argsort(merged["index"], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    merged["sample"] = next((s["sample"] for s in shards if s.get("sample") is not None), None)
    return merged


def score(emb: dict, rng=None, batch_size: int = 32) -> dict:
    """Model row of the table from `embed_generations` output (FID against the same items' real motions)."""
    from cmdm.evaluation.metrics import evaluate_embeddings
    return evaluate_embeddings(emb["text"], emb["motion"], emb["real"], mm_emb=emb.get("mm"),
                               batch_size=batch_size, rng=rng)


def gt_row(emb_a: dict, emb_b: dict, rng=None, batch_size: int = 32) -> dict:
    """Ground-truth row: real motions of one draw of the test set scored against another draw."""
    from cmdm.evaluation.metrics import evaluate_embeddings
    return evaluate_embeddings(emb_a["text"], emb_a["real"], emb_b["real"], batch_size=batch_size, rng=rng)


def eval_indices(dataset, num_samples: int, seed: int = 0) -> list[int]:
    """A fixed random subset of the test items (all of them when num_samples >= len)."""
    n = len(dataset)
    if num_samples >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, num_samples, replace=False).tolist())


# ----------------------------------------------------------------------------
# Table and CLI
# ----------------------------------------------------------------------------

def format_table(rows: dict) -> str:
    """{row name: {metric: (mean, half)}} -> the usual text table."""
    head = f"{'':<14}" + "".join(f"{k:>22}" for k in TABLE_KEYS)
    lines = [head]
    for name, summary in rows.items():
        cells = []
        for k in TABLE_KEYS:
            if k in summary:
                mean, half = summary[k]
                cells.append(f"{mean:>12.4f} ±{half:<8.4f}")
            else:
                cells.append(f"{'-':>22}")
        lines.append(f"{name:<14}" + "".join(cells))
    return "\n".join(lines)


def load_for_evaluation(checkpoint: str, config_path: str | None, overrides=(), device="cpu"):
    """Config + model + diffusion from a checkpoint of this project (config inside) or a raw state dict."""
    from cmdm.config import config_from_dict, load_config
    from cmdm.diffusion import build_diffusion
    from cmdm.model import build_model, load_model_weights
    from cmdm.model.checkpoint import read_checkpoint
    obj = read_checkpoint(checkpoint)
    if config_path is None and isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        cfg = config_from_dict(obj["config"], source=f"{checkpoint} (embedded config)")
        if overrides:
            from cmdm.config import update_config, parse_override
            cfg = update_config(cfg, dict(parse_override(o) for o in overrides), source="command line")
    elif config_path is not None:
        cfg = load_config(config_path, overrides)
    else:
        raise SystemExit(f"error: {checkpoint} holds no config (an afford-motion state dict?): pass --config CONFIG.yaml "
                         "with the model settings it was trained with.")
    from cmdm.train import load_text_cache
    model = build_model(cfg).to(device)
    load_model_weights(model, obj, strict=True)
    load_text_cache(model, cfg)      # the dataset's caption features, if cached: no text transformer to run
    return cfg, model, build_diffusion(cfg.diffusion)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cmdm.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--config", help="config YAML (needed for raw afford-motion state dicts)")
    p.add_argument("--samples", type=int, default=None, help="test items per replication (default: all)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default=None)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: evaluation.ddim_steps)")
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--replications", type=int, default=None)
    p.add_argument("--mm", action="store_true", help="also MultiModality (30 generations per caption, 100 captions)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="JSON file for the results (default: next to the checkpoint)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = p.parse_args(argv)

    from cmdm.data.humanml3d import DataError, dataset_from_config
    from cmdm.evaluation.evaluator import load_evaluator
    from cmdm.evaluation.metrics import replications_summary
    from cmdm.config import ConfigError
    from cmdm.model.checkpoint import CheckpointError
    try:
        cfg, model, diffusion = load_for_evaluation(args.checkpoint, args.config, args.overrides, args.device)
        evaluator = load_evaluator(cfg, device=args.device)
    except (DataError, CheckpointError, ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ev = cfg.evaluation
    sampler = args.sampler or ev.sampler
    steps = None if sampler == "ddpm" else (args.steps or ev.ddim_steps)
    guidance = ev.guidance_scale if args.guidance is None else args.guidance
    eta = ev.ddim_eta if args.eta is None else args.eta
    reps = args.replications or ev.replications
    num = args.samples or 10**9

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
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".eval.json")
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

"""Generate motions for test captions with a CMDM and score them with the text-motion evaluator.

`embed_generations` is what the training loop runs every N epochs (each Ray worker embeds its shard of the
test items; the loop gathers the shards with `merge_shards` before `score`) and what `python -m cmdm.evaluate`
runs once. The metric maths lives in `cmdm.evaluation.metrics` and knows nothing of the model.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from cmdm.config import config_from_dict, load_config, parse_override, update_config
from cmdm.data.humanml3d import collate
from cmdm.diffusion import build_diffusion
from cmdm.evaluation.metrics import evaluate_embeddings
from cmdm.model import build_model, load_model_weights
from cmdm.model.checkpoint import CheckpointError, read_checkpoint
from cmdm.model.text import load_text_cache

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
    return evaluate_embeddings(emb["text"], emb["motion"], emb["real"], mm_emb=emb.get("mm"),
                               batch_size=batch_size, rng=rng)


def gt_row(emb_a: dict, emb_b: dict, rng=None, batch_size: int = 32) -> dict:
    """Ground-truth row: real motions of one draw of the test set scored against another draw."""
    return evaluate_embeddings(emb_a["text"], emb_a["real"], emb_b["real"], batch_size=batch_size, rng=rng)


def eval_indices(dataset, num_samples: int, seed: int = 0) -> list[int]:
    """A fixed random subset of the test items (all of them when num_samples >= len)."""
    n = len(dataset)
    if num_samples >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, num_samples, replace=False).tolist())


def load_for_evaluation(checkpoint: str, config_path: str | None, overrides=(), device="cpu"):
    """Config + model + diffusion from a checkpoint of this project (config inside) or a raw state dict."""
    obj = read_checkpoint(checkpoint)
    if config_path is None and isinstance(obj, dict) and isinstance(obj.get("config"), dict):
        cfg = config_from_dict(obj["config"], source=f"{checkpoint} (embedded config)")
        if overrides:
            cfg = update_config(cfg, dict(parse_override(o) for o in overrides), source="command line")
    elif config_path is not None:
        cfg = load_config(config_path, overrides)
    else:
        raise CheckpointError(f"{checkpoint} holds no config (an afford-motion state dict?): pass --config "
                              "CONFIG.yaml with the model settings it was trained with.")
    model = build_model(cfg).to(device)
    load_model_weights(model, obj, strict=True)
    load_text_cache(model, cfg)      # the dataset's caption features, if cached: no text transformer to run
    return cfg, model, build_diffusion(cfg.diffusion)


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

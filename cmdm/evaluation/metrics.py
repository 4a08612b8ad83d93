"""Text-to-motion metrics on plain arrays of embeddings (the protocol of Guo et al. 2022, used by MDM, MLD, ...).

Nothing here knows a model or an evaluator: inputs are numpy arrays of co-embeddings.

    FID            Frechet distance between Gaussians fitted to real and generated motion embeddings
    R-precision    per batch of 32 (drop_last): does caption i rank its own motion in its top 1/2/3?
    MM-Dist        mean distance of matched (caption, motion) pairs over those batches
    Diversity      mean distance of 300 random pairs of motions
    MultiModality  per caption, mean distance of 10 random pairs among its 30 generations
    replications   mean and 95% half-width 1.96 * std / sqrt(n) (std with ddof=0, as the reference)
"""
from __future__ import annotations

import numpy as np

# Which way is better for each number a run reports and a sweep ranks by (the training loss included): the one
# table the best-checkpoint tracker (cmdm/train.py) and the sweep file's metric/mode/targets checks read.
LOWER_IS_BETTER = {"fid": True, "mm_dist": True, "top1": False, "top2": False, "top3": False, "loss": True}


def improves(metric: str, value: float, best: float | None, margin: float = 0.0) -> bool:
    """True when `value` beats `best` (None: nothing yet) by more than `margin`, in `metric`'s direction."""
    if best is None:
        return True
    return value < best - margin if LOWER_IS_BETTER[metric] else value > best + margin


def _as_2d(x, name) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D) of embeddings, got shape {x.shape}")
    return x


def euclidean_distance_matrix(a, b) -> np.ndarray:
    """(N, D) x (M, D) -> (N, M) Euclidean distances; tiny negative squares from rounding are clipped to 0."""
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding widths differ: {a.shape[1]} vs {b.shape[1]}")
    sq = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.sqrt(np.maximum(sq, 0.0))


# ----------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------

def embedding_statistics(emb) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (np.cov, rows are samples) of (N, D) embeddings."""
    emb = _as_2d(emb, "emb")
    if len(emb) < 2:
        raise ValueError(f"a covariance needs at least 2 embeddings, got {len(emb)}")
    return emb.mean(0), np.cov(emb, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr sqrtm(S1 S2).

    A singular product can make sqrtm non-finite: then eps*I is added to both covariances.
    Rounding can leave a small imaginary part: dropped if the diagonal's is < 1e-3, an error otherwise.
    (scipy >= 1.18 has no `disp` argument; `sqrtm(A)` returns the matrix in all recent versions.)
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: means {mu1.shape} vs {mu2.shape}, covariances {sigma1.shape} vs {sigma2.shape}")
    from scipy import linalg     # here: the sweep's Train controllers import this module (LOWER_IS_BETTER), not FID
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(S1 S2) has an imaginary component of {np.abs(covmean.imag).max():.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid(emb_a, emb_b) -> float:
    """FID between two sets of (N, D) embeddings."""
    return frechet_distance(*embedding_statistics(emb_a), *embedding_statistics(emb_b))


# ----------------------------------------------------------------------------
# R-precision and MM-Dist
# ----------------------------------------------------------------------------

def top_k_hits(dist, top_k: int = 3) -> np.ndarray:
    """(n, n) text x motion distances -> (n, top_k) bool: row i's own motion i is within its k nearest.

    Ties are broken by column order (stable sort), so the result is deterministic.
    """
    dist = np.asarray(dist)
    order = np.argsort(dist, axis=1, kind="stable")
    rank = np.argmax(order == np.arange(len(dist))[:, None], axis=1)  # position of the true motion
    return rank[:, None] < np.arange(1, top_k + 1)[None, :]


def r_precision(text_emb, motion_emb, batch_size: int = 32, top_k: int = 3) -> dict:
    """R-precision Top-1..k and MM-Dist over consecutive batches of `batch_size` pairs (last partial batch dropped).

    Pair i is (text_emb[i], motion_emb[i]); within each batch every caption ranks all the batch's motions.
    Returns {'top1': .., ..., 'mm_dist': .., 'num_pairs': N used}.
    """
    text_emb, motion_emb = _as_2d(text_emb, "text_emb"), _as_2d(motion_emb, "motion_emb")
    if len(text_emb) != len(motion_emb):
        raise ValueError(f"{len(text_emb)} text embeddings for {len(motion_emb)} motion embeddings")
    n_batches = len(text_emb) // batch_size
    if n_batches == 0:
        raise ValueError(f"R-precision needs at least one full batch of {batch_size} pairs, got {len(text_emb)}")
    hits, matched = np.zeros(top_k), 0.0
    for b in range(n_batches):
        sl = slice(b * batch_size, (b + 1) * batch_size)
        dist = euclidean_distance_matrix(text_emb[sl], motion_emb[sl])
        hits += top_k_hits(dist, top_k).sum(0)
        matched += np.trace(dist)
    n = n_batches * batch_size
    out = {f"top{k + 1}": float(hits[k] / n) for k in range(top_k)}
    out["mm_dist"] = float(matched / n)
    out["num_pairs"] = n
    return out


# ----------------------------------------------------------------------------
# Diversity and MultiModality
# ----------------------------------------------------------------------------

def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def diversity(emb, times: int = 300, rng=None) -> float:
    """Mean distance between `times` random pairs: two index draws, each without replacement (as the reference)."""
    emb, rng = _as_2d(emb, "emb"), _rng(rng)
    if len(emb) <= times:
        raise ValueError(f"diversity over {times} pairs needs more than {times} embeddings, got {len(emb)}")
    first = rng.choice(len(emb), times, replace=False)
    second = rng.choice(len(emb), times, replace=False)
    return float(np.linalg.norm(emb[first] - emb[second], axis=1).mean())


def multimodality(emb, times: int = 10, rng=None) -> float:
    """(N captions, R generations, D) -> mean distance of `times` random pairs of generations, same pairs for every caption."""
    emb, rng = np.asarray(emb, np.float64), _rng(rng)
    if emb.ndim != 3:
        raise ValueError(f"multimodality takes (captions, generations, D) embeddings, got shape {emb.shape}")
    if emb.shape[1] <= times:
        raise ValueError(f"multimodality over {times} pairs needs more than {times} generations per caption, got {emb.shape[1]}")
    first = rng.choice(emb.shape[1], times, replace=False)
    second = rng.choice(emb.shape[1], times, replace=False)
    return float(np.linalg.norm(emb[:, first] - emb[:, second], axis=2).mean())


# ----------------------------------------------------------------------------
# One evaluation, and replications
# ----------------------------------------------------------------------------

def evaluate_embeddings(text_emb, motion_emb, real_motion_emb, *, mm_emb=None, batch_size: int = 32,
                        diversity_times: int = 300, mm_times: int = 10, rng=None) -> dict:
    """All metrics of one replication for one row of the table.

    text_emb/motion_emb: matched pairs (caption i, its motion i) of the row being scored;
    real_motion_emb: the ground-truth test motions FID compares against (for the GT row, pass the
    real motions as both `motion_emb` and `real_motion_emb`, as the reference's GT row does).
    mm_emb (captions, generations, D), optional: adds MultiModality. Diversity is skipped (None)
    when there are not more than `diversity_times` motions.
    """
    rng = _rng(rng)
    row = r_precision(text_emb, motion_emb, batch_size=batch_size)
    row.pop("num_pairs")
    row["fid"] = fid(real_motion_emb, motion_emb)
    row["diversity"] = diversity(motion_emb, diversity_times, rng) if len(motion_emb) > diversity_times else None
    if mm_emb is not None:
        row["multimodality"] = multimodality(mm_emb, mm_times, rng)
    return row


def replications_summary(rows: list[dict]) -> dict:
    """[{metric: value}, ...] -> {metric: (mean, 95% half-width)}; half-width = 1.96 * std(ddof=0) / sqrt(n)."""
    if not rows:
        raise ValueError("no replication to summarise")
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r.get(key) is not None]
        if not values:
            continue
        v = np.asarray(values, np.float64)
        out[key] = (float(v.mean()), float(1.96 * v.std() / np.sqrt(len(v))))
    return out

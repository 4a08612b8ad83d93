"""Metrics against independent truth: direct formulas, hand-built distances, loops and statistics."""
import numpy as np
import pytest
from scipy import linalg

from cmdm.evaluation import metrics


def direct_fid(a, b):
    """FID the long way: Tr sqrtm(S1 S2) as the sum of square roots of the eigenvalues of S1 S2."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(s1 @ s2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt


# ---------------------------------------------------------------- FID

def test_fid_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16))
    b = rng.standard_normal((300, 16)) * 1.5 + 0.3
    assert metrics.fid(a, b) == pytest.approx(direct_fid(a, b), rel=1e-6)
    # and the scipy route written out here
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_fid_zero_for_identical_sets_and_mean_shift_for_shifted_sets():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32))
    assert abs(metrics.fid(a, a)) < 1e-6 * np.trace(np.cov(a, rowvar=False))
    shift = rng.standard_normal(32)
    assert metrics.fid(a, a + shift) == pytest.approx((shift ** 2).sum(), rel=1e-6)


def test_fid_with_fewer_samples_than_dims_is_finite():
    """Rank-deficient covariances (N < D, as 512-d embeddings of a small test set) still give a number."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 128)), rng.standard_normal((60, 128)) + 1.0
    value = metrics.fid(a, b)
    assert np.isfinite(value) and value > 128  # the mean shift alone is 128


def test_frechet_distance_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------- R-precision and MM-Dist

def test_top_k_hits_on_a_hand_built_distance_matrix():
    dist = np.array([[0.1, 0.5, 0.9],    # row 0: own motion nearest         -> rank 1
                     [0.2, 0.6, 0.4],    # row 1: 0.2 < 0.4 < 0.6             -> rank 3
                     [0.3, 0.1, 0.2]])   # row 2: 0.1 < 0.2                   -> rank 2
    hits = metrics.top_k_hits(dist, 3)
    assert hits.tolist() == [[True, True, True], [False, False, True], [False, True, True]]
    # a tie with an earlier column ranks behind it (stable order), with a later column ahead of it
    assert metrics.top_k_hits(np.array([[1.0, 1.0], [1.0, 1.0]]), 1)[:, 0].tolist() == [True, False]


def test_r_precision_by_hand_with_one_dimensional_embeddings():
    # batch of 4; texts at 0, 10, 20, 30; motion i placed so that caption i ranks it 1st, 2nd, 3rd, 4th.
    text = np.array([[0.0], [10.0], [20.0], [30.0]])
    motion = np.array([[1.0], [8.0], [17.5], [0.0]])
    # row 0: |0-1|=1 (own), 8, 17.5, 0 -> own is 2nd (0.0 is nearer)
    # row 1: 9, |10-8|=2 (own), 7.5, 10 -> own is 1st
    # row 2: 19, 12, |20-17.5|=2.5 (own), 20 -> own is 1st
    # row 3: 29, 22, 12.5, |30-0|=30 (own) -> own is 4th
    out = metrics.r_precision(text, motion, batch_size=4, top_k=3)
    assert (out["top1"], out["top2"], out["top3"]) == (0.5, 0.75, 0.75)
    assert out["mm_dist"] == pytest.approx((1 + 2 + 2.5 + 30) / 4)
    assert out["num_pairs"] == 4


def test_r_precision_drops_the_last_partial_batch():
    rng = np.random.default_rng(3)
    t, m = rng.standard_normal((70, 8)), rng.standard_normal((70, 8))
    out = metrics.r_precision(t, m)
    assert out["num_pairs"] == 64
    t2 = t.copy()
    t2[64:] = m[64:]                             # perfect pairs in the dropped tail change nothing
    assert metrics.r_precision(t2, m) == out
    mm = np.mean([np.linalg.norm(t[i] - m[i]) for i in range(64)])
    assert out["mm_dist"] == pytest.approx(mm)
    with pytest.raises(ValueError, match="full batch"):
        metrics.r_precision(t[:31], m[:31])


def test_matched_embeddings_score_one_and_shuffled_texts_score_chance():
    """Shuffled captions: caption i's own motion is a random one of its batch, so Top-k -> k/32.

    200 batches = 6400 captions; Top-1 hits are ~Bernoulli(1/32), std sqrt(p(1-p)/6400) = 0.0022,
    so a tolerance of 0.009 is about 4 standard deviations (false alarm ~1e-4).
    """
    rng = np.random.default_rng(4)
    motion = rng.standard_normal((6400, 32))
    text = motion + 0.05 * rng.standard_normal(motion.shape)
    assert metrics.r_precision(text, motion)["top1"] == 1.0
    shuffled = metrics.r_precision(text[rng.permutation(len(text))], motion)
    for k, tol in ((1, 0.009), (2, 0.012), (3, 0.015)):
        assert shuffled[f"top{k}"] == pytest.approx(k / 32, abs=tol)


def test_euclidean_distance_matrix_matches_a_loop_and_is_never_nan():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((4, 7))
    loop = np.array([[np.linalg.norm(x - y) for y in b] for x in a])
    np.testing.assert_allclose(metrics.euclidean_distance_matrix(a, b), loop, rtol=1e-10)
    big = rng.standard_normal((3, 512)) * 1e3
    assert not np.isnan(metrics.euclidean_distance_matrix(big, big)).any()


# ---------------------------------------------------------------- diversity, multimodality

def test_diversity_equals_a_loop_over_the_same_pairs():
    emb = np.random.default_rng(6).standard_normal((400, 16))
    value = metrics.diversity(emb, 300, np.random.default_rng(7))
    draw = np.random.default_rng(7)
    first, second = draw.choice(400, 300, replace=False), draw.choice(400, 300, replace=False)
    loop = sum(np.sqrt(sum((emb[i, d] - emb[j, d]) ** 2 for d in range(16))) for i, j in zip(first, second)) / 300
    assert value == pytest.approx(loop, rel=1e-10)


def test_diversity_of_gaussian_embeddings_is_about_sqrt_2d():
    emb = np.random.default_rng(8).standard_normal((5000, 256))
    assert metrics.diversity(emb, 300, 0) == pytest.approx(np.sqrt(2 * 256), rel=0.02)
    with pytest.raises(ValueError, match="more than 300"):
        metrics.diversity(emb[:300], 300)


def test_multimodality_equals_a_loop_and_ignores_other_captions():
    emb = np.random.default_rng(9).standard_normal((20, 30, 8))
    value = metrics.multimodality(emb, 10, np.random.default_rng(10))
    draw = np.random.default_rng(10)
    first, second = draw.choice(30, 10, replace=False), draw.choice(30, 10, replace=False)
    loop = np.mean([np.linalg.norm(emb[c, i] - emb[c, j]) for c in range(20) for i, j in zip(first, second)])
    assert value == pytest.approx(loop, rel=1e-10)
    spread = emb.copy()
    spread += np.arange(20)[:, None, None] * 100.0     # captions far apart: within-caption distances unchanged
    assert metrics.multimodality(spread, 10, np.random.default_rng(10)) == pytest.approx(value)


# ---------------------------------------------------------------- one evaluation, replications

def test_evaluate_embeddings_gt_row():
    rng = np.random.default_rng(11)
    motion = rng.standard_normal((320, 16))
    text = motion + 0.01 * rng.standard_normal(motion.shape)
    row = metrics.evaluate_embeddings(text, motion, motion, rng=0)
    assert row["top1"] == 1.0 and abs(row["fid"]) < 1e-6 and row["diversity"] > 0
    assert set(row) == {"top1", "top2", "top3", "mm_dist", "fid", "diversity"}
    mm = rng.standard_normal((32, 30, 16))
    assert "multimodality" in metrics.evaluate_embeddings(text, motion, motion, mm_emb=mm, rng=0)


def test_replications_summary_mean_and_half_width():
    rows = [{"fid": v, "top1": 0.5, "multimodality": None} for v in (1.0, 2.0, 3.0, 4.0)]
    out = metrics.replications_summary(rows)
    std = np.sqrt(np.mean((np.array([1, 2, 3, 4]) - 2.5) ** 2))   # ddof = 0, as the reference
    assert out["fid"] == pytest.approx((2.5, 1.96 * std / 2))
    assert out["top1"] == (0.5, 0.0) and "multimodality" not in out


def test_improves_reads_each_metrics_direction_and_the_margin():
    assert metrics.improves("fid", 0.3, None) and metrics.improves("top1", 0.1, None)
    assert metrics.improves("fid", 0.3, 0.4) and not metrics.improves("fid", 0.4, 0.3)
    assert metrics.improves("top1", 0.5, 0.4) and not metrics.improves("top1", 0.4, 0.5)
    assert not metrics.improves("fid", 0.39, 0.4, margin=0.05) and metrics.improves("fid", 0.34, 0.4, margin=0.05)
    assert not metrics.improves("loss", 0.4, 0.4)

"""Fitting an evaluator on a tiny toy dataset whose captions determine the motion: it must learn the link."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdm.evaluation import metrics
from cmdm.evaluation.evaluator import load_fitted_evaluator
from cmdm.evaluation.fit import FitConfig, data_fingerprint, ensure_evaluator, fit, group_mean_std
from cmdm.evaluation.networks import CheckpointError

VERBS = ("walk", "run", "jump", "wave")
DIRECTIONS = {"forward": (0, 1), "backward": (0, -1), "left": (1, 0), "right": (-1, 0)}
SPEEDS = {"slowly": 0.5, "quickly": 1.5}


def make_toy_dataset(root: Path, n_clips: int = 160, seed: int = 0) -> Path:
    """HumanML3D layout; 32 caption classes (verb x direction x speed), each written into the features."""
    rng = np.random.default_rng(seed)
    (root / "new_joint_vecs").mkdir(parents=True)
    (root / "texts").mkdir()
    ids, all_motion = [], []
    for i in range(n_clips):
        v, d, s = rng.integers(len(VERBS)), rng.integers(len(DIRECTIONS)), rng.integers(len(SPEEDS))
        verb, (direction, vec), (speed, k) = VERBS[v], list(DIRECTIONS.items())[d], list(SPEEDS.items())[s]
        T = int(rng.integers(40, 100))
        t = np.arange(T) / 20.0
        x = 0.1 * rng.standard_normal((T, 263))
        x[:, 1:3] += k * np.asarray(vec)                              # root velocity: direction and speed
        x[:, 4 + 10 * v:14 + 10 * v] += np.sin(2 * np.pi * (1 + v) * k * t)[:, None]  # the verb's body part
        np.save(root / "new_joint_vecs" / f"{i:06d}.npy", x.astype(np.float32))
        caption = f"a person {verb}s {direction} {speed}"
        tokens = f"a/DET person/NOUN {verb}/VERB {direction}/ADV {speed}/ADV"
        (root / "texts" / f"{i:06d}.txt").write_text(f"{caption}#{tokens}#0.0#0.0\n")
        ids.append(f"{i:06d}")
        all_motion.append(x)
    cat = np.concatenate(all_motion)
    np.save(root / "Mean.npy", cat.mean(0).astype(np.float32))
    np.save(root / "Std.npy", cat.std(0).astype(np.float32))
    n_train, n_val = int(0.6 * n_clips), int(0.2 * n_clips)
    for split, part in (("train", ids[:n_train]), ("val", ids[n_train:n_train + n_val]), ("test", ids[n_train + n_val:])):
        (root / f"{split}.txt").write_text("\n".join(part) + "\n")
    return root


TINY = dict(dim_movement_enc_hidden=32, dim_movement_latent=32, dim_motion_hidden=48, dim_word=32,
            dim_text_hidden=48, dim_coemb=32)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = make_toy_dataset(tmp_path_factory.mktemp("toy"))
    out = tmp_path_factory.mktemp("evaluator")
    cfg = FitConfig(epochs=40, ae_epochs=1, lr=3e-3, negatives="all", sizes={**FitConfig().sizes, **TINY}, threads=1)
    path = fit(root, out, cfg, progress=False, log=lambda *_: None)
    return root, out, path


def test_fit_saves_a_loadable_evaluator(fitted):
    root, out, path = fitted
    assert path == out / "evaluator.pt" and path.is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".evaluator.pt")]  # no temp file left
    ev = load_fitted_evaluator(path)
    assert ev.sizes.dim_coemb == 32 and ev.info["fingerprint"] == data_fingerprint(root)
    ckpt = torch.load(path, weights_only=True)
    assert {"movement_encoder", "motion_encoder", "text_encoder", "vocab", "mean", "std", "metrics"} <= set(ckpt)
    assert "walk" in ckpt["vocab"] and ckpt["vocab"][0] == "unk"


def test_fitted_evaluator_links_text_and_motion(fitted):
    """Train clips, 3 random batchings of 32: Top-1 far above chance (1/32 ~ 0.03)."""
    root, _, path = fitted
    ev = load_fitted_evaluator(path)
    from cmdm.data.humanml3d import MotionDataset
    ds = MotionDataset(root, "train", use_contacts=False, train=False, progress=False)
    raw = [e.motion[: len(e.motion) // 4 * 4] for e in ds.entries]
    lengths = np.array([len(m) for m in raw])
    padded = np.zeros((len(raw), lengths.max(), 263), np.float32)
    for i, m in enumerate(raw):
        padded[i, :len(m)] = m
    m_emb = ev.embed_motion(padded, lengths)
    t_emb = ev.embed_text([list(e.captions[0].tokens) for e in ds.entries])
    rng = np.random.default_rng(0)
    top1 = np.mean([metrics.r_precision(t_emb[p], m_emb[p])["top1"]
                    for p in (rng.permutation(len(raw)) for _ in range(3))])
    assert top1 > 0.2, top1


def test_embeddings_ignore_padding_and_batch_order(fitted):
    _, _, path = fitted
    ev = load_fitted_evaluator(path)
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((3, 80, 263)).astype(np.float32)
    lengths = np.array([80, 48, 60])
    a = ev.embed_motion(raw, lengths)
    raw2 = raw.copy()
    raw2[1, 48:] = 1e3                         # garbage after the valid frames changes nothing
    b = ev.embed_motion(raw2[[2, 1, 0]], lengths[[2, 1, 0]])[[2, 1, 0]]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_ensure_evaluator_reuses_cache_and_refits_on_new_data(fitted, tmp_path):
    root, out, path = fitted
    root2, out2 = tmp_path / "data", tmp_path / "evaluator"
    shutil.copytree(root, root2)
    shutil.copytree(out, out2)
    quick = FitConfig(epochs=1, ae_epochs=0, sizes={**FitConfig().sizes, **TINY}, threads=1)
    cached = out2 / "evaluator.pt"
    mtime = cached.stat().st_mtime_ns
    assert ensure_evaluator(root2, out2, progress=False, cfg=quick, log=lambda *_: None) == cached
    assert cached.stat().st_mtime_ns == mtime                    # same data: the cache is used as is
    (root2 / "test.txt").write_text((root2 / "test.txt").read_text().splitlines()[0] + "\n")
    with pytest.warns(UserWarning, match="fingerprint"):
        load_fitted_evaluator(cached, data_root=root2)
    assert ensure_evaluator(root2, out2, progress=False, cfg=quick, log=lambda *_: None) == cached
    assert load_fitted_evaluator(cached).info["fingerprint"] == data_fingerprint(root2)   # refitted


def test_group_std_is_shared_within_feature_groups():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 263)) * np.linspace(0.5, 2, 263)
    mean, std = group_mean_std([x])
    assert std.shape == (263,) and np.allclose(std[4:67], std[4]) and np.allclose(std[259:], std[259])
    assert not np.isclose(std[4], std[67])


def test_not_an_evaluator_file_is_refused(tmp_path):
    torch.save({"foo": torch.zeros(1)}, tmp_path / "evaluator.pt")
    with pytest.raises(CheckpointError, match="not a fitted evaluator"):
        load_fitted_evaluator(tmp_path)


def test_matching_loss_is_the_reference_hinge_with_shifted_negatives():
    from cmdm.evaluation.fit import matching_loss
    g = torch.Generator().manual_seed(0)
    t, m = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    texts = ["a", "b", "c", "d", "e", "a"]
    pos, neg = matching_loss(t, m, texts, 10.0, np.random.default_rng(3))
    shift = int(np.random.default_rng(3).integers(1, 6))      # the same draw
    assert pos.item() == pytest.approx(np.mean([float((t[i] - m[i]).pow(2).sum()) for i in range(6)]), rel=1e-5)
    terms = [max(0.0, 10 - float((t[i] - m[(i + shift) % 6]).norm())) ** 2
             for i in range(6) if texts[i] != texts[(i + shift) % 6]]   # same caption: not a negative
    assert neg.item() == pytest.approx(np.mean(terms), rel=1e-4)
    pos_all, neg_all = matching_loss(t, m, texts, 10.0, None, negatives="all")
    terms = [max(0.0, 10 - float((t[i] - m[j]).norm())) ** 2 for i in range(6) for j in range(6) if texts[i] != texts[j]]
    assert pos_all.item() == pytest.approx(pos.item()) and neg_all.item() == pytest.approx(np.mean(terms), rel=1e-4)


def test_load_evaluator_from_a_config_uses_the_cached_fitted_evaluator(fitted):
    from types import SimpleNamespace
    from cmdm.evaluation.evaluator import load_evaluator
    root, out, path = fitted
    cfg = SimpleNamespace(data=SimpleNamespace(name="custom", root=str(root), min_motion_len=40, max_motion_len=200),
                          evaluation=SimpleNamespace(evaluator_dir=str(out), glove_dir="unused"))
    mtime = path.stat().st_mtime_ns
    ev = load_evaluator(cfg)
    assert ev.source == str(path) and path.stat().st_mtime_ns == mtime


def test_the_evaluator_is_fitted_on_the_protocols_clips_whatever_lengths_a_run_trains_on(monkeypatch):
    """A sweep training on short clips (data.max_motion_len 80) and the demo share a data root: whichever fits
    the cached evaluator first, it is the same one (the cache is keyed by the data alone)."""
    from types import SimpleNamespace
    from cmdm.evaluation import fit as fit_module
    seen = []
    monkeypatch.setattr(fit_module, "ensure_evaluator", lambda root, out, cfg=None, **kw: seen.append(cfg))
    for lengths in ((40, 80), (40, 200), (60, 120)):
        cfg = SimpleNamespace(data=SimpleNamespace(name="synthetic", root="r", min_motion_len=lengths[0],
                                                   max_motion_len=lengths[1]),
                              evaluation=SimpleNamespace(evaluator_dir="e"))
        fit_module.prepare_evaluator(cfg, progress=False)
    assert [(c.min_motion_len, c.max_motion_len) for c in seen] == [(40, 200)] * 3 and seen[0] == FitConfig()


def test_ensure_evaluator_refits_an_evaluator_of_an_older_fit_version(fitted, tmp_path):
    """Same data, but fitted by an older fit (no jittered negatives): the cache is not reused."""
    from cmdm.evaluation.fit import FIT_VERSION
    root, out, _ = fitted
    out2 = tmp_path / "evaluator"
    shutil.copytree(out, out2)
    cached = out2 / "evaluator.pt"
    state = torch.load(cached, weights_only=True)
    assert state["fit_version"] == FIT_VERSION and "clean" in state["sanity"]
    state.pop("fit_version")                                    # as written before the version existed
    torch.save(state, cached)
    quick = FitConfig(epochs=1, ae_epochs=0, jitter_weight=0.0, sizes={**FitConfig().sizes, **TINY}, threads=1)
    assert ensure_evaluator(root, out2, progress=False, cfg=quick, log=lambda *_: None) == cached
    assert torch.load(cached, weights_only=True)["fit_version"] == FIT_VERSION


def test_the_evaluator_fingerprint_is_the_same_for_the_same_weights_wherever_they_are_loaded_from(fitted, tmp_path):
    from cmdm.evaluation.evaluator import load_fitted_evaluator
    _, _, path = fitted
    copy = tmp_path / "elsewhere.pt"
    shutil.copy(path, copy)
    a, b = load_fitted_evaluator(path), load_fitted_evaluator(copy)
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 64
    with torch.no_grad():
        next(b.motion_encoder.parameters()).view(-1)[0] += 1e-3
    b._fingerprint = None
    assert a.fingerprint() != b.fingerprint()

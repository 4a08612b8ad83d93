"""afford-motion's Point Transformer contact encoder: pointops kernel semantics, strict loading of
official state dicts, and golden outputs recorded from afford-motion's own CMDM (see
tests/afford_motion_layout.py)."""

import numpy as np
import pytest
import torch

import cmdm.model.pointtransformer as pt
from afford_motion_layout import (GOLDEN_FILE, GOLDEN_POINTS, golden_inputs, official_cmdm, official_keys,
                                  rule_state_dict)
from cmdm.model.checkpoint import load_model_weights


# ---- point operations: hand-computed cases of the CUDA kernels ------------------------------

def test_fps_ties_follow_the_kernels_block_reduction():
    # 4 points -> 4 threads, one point each. After point 0, points 1, 2, 3 are all at distance 1:
    # the tree reduction keeps the lower slot on equal values (slots 0/2 vs 1/3, then 0 vs 1),
    # so thread 2 wins (not the lowest index, 1). Then 1 and 3 tie again (1 and 4 vs 1 and 2): 1 wins.
    p = torch.tensor([[[0., 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0]]])
    assert pt.farthest_point_sample(p, 3).tolist() == [[0, 2, 1]]


def test_fps_starts_at_point_zero_and_skips_duplicates():
    p = torch.tensor([[[5., 5, 5], [5, 5, 5], [0, 0, 0], [0, 0, 0], [5, 5, 5]]])
    idx = pt.farthest_point_sample(p, 2)
    assert idx[0, 0] == 0 and p[0, idx[0, 1]].tolist() == [0, 0, 0]


def test_knn_heap_order_among_equal_distances():
    # Three points at squared distance 1, k = 2: the heap keeps points 0 and 1 (point 2 is not strictly
    # closer) and its sort returns them as [1, 0] (traced by hand through reheap / heap_sort).
    p = torch.tensor([[[1., 0, 0], [0, 1, 0], [0, 0, 1]]])
    idx, d2 = pt.knn_query(p, torch.zeros(1, 1, 3), 2)
    assert idx.tolist() == [[[1, 0]]] and d2.tolist() == [[[1.0, 1.0]]]


def test_knn_query_is_its_own_neighbour_and_pads_like_the_kernel():
    p = torch.tensor([[[0., 0, 0], [3, 0, 0]]])
    idx, d2 = pt.knn_query(p, p, 3)          # fewer points than k: (1e10, point 0) slots stay
    assert idx.tolist() == [[[0, 1, 0], [1, 0, 0]]]
    assert d2[0, :, :2].tolist() == [[0.0, 9.0], [0.0, 9.0]] and (d2[0, :, 2] == 1e10).all()


def _scene(seed, B, n):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(B, n, 3, generator=g)
    p[:, n // 2:] = p[:, :n // 2]                                   # exact duplicates
    p[:, ::5] = torch.round(p[:, ::5] * 2) / 2                      # grid points: equal distances
    return p


def test_heap_path_equals_topk_without_ties_and_batched_equals_per_sample():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(50, 300, generator=g)
    hi, hd = pt.heap_knn(d, 16)
    vals, ids = d.topk(16, largest=False, sorted=True)
    assert torch.equal(hi, ids) and torch.equal(hd, vals)
    p = _scene(1, 3, 96)
    fps, (idx, d2) = pt.farthest_point_sample(p, 24), pt.knn_query(p, p, 16)
    for b in range(3):
        assert torch.equal(fps[b:b + 1], pt.farthest_point_sample(p[b:b + 1], 24))
        i1, e1 = pt.knn_query(p[b:b + 1], p[b:b + 1], 16)
        assert torch.equal(idx[b:b + 1], i1) and torch.equal(d2[b:b + 1], e1)


def test_distance_blocks_are_chunked(monkeypatch):
    """kNN never holds more than DIST_CHUNK_ELEMENTS (about) distances; no n x n block per sample."""
    seen = []
    real = pt.square_distances
    monkeypatch.setattr(pt, "square_distances", lambda q, p: seen.append(q.shape[0] * q.shape[1] * p.shape[1]) or real(q, p))
    monkeypatch.setattr(pt, "DIST_CHUNK_ELEMENTS", 4 * 512)
    p = torch.rand(4, 512, 3)
    pt.knn_query(p, p, 8)
    assert max(seen) <= 4 * 512 < 512 * 512
    # at afford-motion's size (8192 points x batch 32) a chunk is 16 queries per sample:
    assert max(1, (1 << 22) // (32 * 8192)) * 32 * 8192 <= 1 << 22


# ---- official state dicts ---------------------------------------------------------------------

def test_official_state_dict_loads_strictly_raw_and_with_module_prefix():
    model = official_cmdm()
    ours = model.state_dict()
    assert {e["key"] for e in official_keys() if not e["key"].endswith(".pe")} == set(ours)
    for prefix in ("", "module."):
        report = load_model_weights(model, rule_state_dict(prefix), strict=True)
        assert not report.missing and not report.unexpected and not report.mismatched
        assert len(report.matched) == 280 and len(report.ignored) == 2          # the two sinusoidal tables


def test_forward_equals_afford_motions_recorded_output():
    model = official_cmdm(GOLDEN_POINTS)
    load_model_weights(model, rule_state_dict("module."), strict=True)
    model.eval()
    xyz, contact, text, x, t, mask = golden_inputs()
    golden = np.load(GOLDEN_FILE)
    with torch.no_grad():
        tokens = model.contact_encoder(xyz, contact)
        out = model(x, t, model.encode_conditions(text, torch.cat([xyz, contact], -1)), mask)
    assert np.abs(tokens.numpy() - golden["contact_tokens"]).max() <= 1e-5
    assert np.abs(out.numpy() - golden["forward"]).max() <= 1e-5


def stub_clip(monkeypatch):
    """The frozen CLIP text encoder is not part of a state dict: a stand-in with its width (512) only."""
    import cmdm.model.cmdm as cmdm_mod

    class FakeClip:
        dim = 512

        def __init__(self, *a, **k):
            pass
    monkeypatch.setattr(cmdm_mod, "TextEncoder", FakeClip)


def test_evaluate_loads_an_official_state_dict_with_config(tmp_path, monkeypatch):
    """`python -m cmdm.evaluate --config` path: an official state dict (no config inside) loads strictly.
    The frozen CLIP is stubbed (it is not in state dicts); only its width (512) matters here."""
    from cmdm.evaluation.generate import load_for_evaluation

    stub_clip(monkeypatch)
    ckpt = tmp_path / "model600000.pt"
    torch.save(rule_state_dict("module."), ckpt)
    cfg, model, _ = load_for_evaluation(str(ckpt), "configs/afford_motion.yaml", [
        "model.text_model.name=ViT-B/32", f"data.root={tmp_path}"])
    assert cfg.model.contact_model.arch == "point_transformer"
    assert isinstance(model.contact_encoder, pt.SceneMapEncoder)


def test_config_checks_point_transformer_token_counts():
    from cmdm.config import ConfigError, load_config
    assert load_config("configs/stable.yaml").model.contact_model.arch == "point_transformer"
    assert load_config("configs/demo.yaml").model.contact_model.arch == "compact"
    with pytest.raises(ConfigError) as err:
        load_config("configs/stable.yaml", ["data.contact_num_points=4096"])
    msg = str(err.value)
    assert "model.condition_embedder.contact_num_tokens=64" in msg and "model.contact_model.arch=compact" in msg


def test_set_only_mode_keeps_the_kernels_neighbour_sets():
    """The encoder's kNN (exact_order=False) may reorder equal distances, never change the set."""
    p = _scene(2, 2, 120)
    for k in (8, 16):
        exact, _ = pt.knn_query(p, p, k)
        loose, _ = pt.knn_query(p, p, k, exact_order=False)
        assert torch.equal(exact.sort(-1).values, loose.sort(-1).values)


def test_afford_motion_yaml_builds_their_module():
    """configs/afford_motion.yaml is afford-motion's CMDM: its state dict has their keys and shapes (the text
    adapter's input width is the text model's: 512 for CLIP, 384 for the MiniLM this test builds with)."""
    from cmdm.config import load_config
    from cmdm.model import build_model
    cfg = load_config("configs/afford_motion.yaml", ["model.text_model.name=all-minilm-l6-v2"])
    mine = {k: tuple(v.shape) for k, v in build_model(cfg, load_text_encoder=False).state_dict().items()
            if not k.endswith(".pe")}
    theirs = {e["key"]: tuple(e["shape"]) for e in official_keys() if not e["key"].endswith(".pe")}
    assert theirs.pop("language_adapter.weight") == (512, 512) and mine.pop("language_adapter.weight") == (512, 384)
    assert mine == theirs


def test_resume_from_accepts_an_official_state_dict_up_front(tmp_path, monkeypatch):
    """`train_ray.py configs/afford_motion.yaml --resume-from model.pt`: the driver's up-front check (the one
    run before data and Ray) accepts an official `module.`-prefixed state dict strictly, and refuses it under
    the stable (dit) config. The frozen CLIP is stubbed: only its width (512) matters here."""
    from cmdm.config import load_config
    from cmdm.train import RunError, check_init_from

    stub_clip(monkeypatch)
    ckpt = tmp_path / "model600000.pt"
    torch.save(rule_state_dict("module."), ckpt)
    check_init_from(load_config("configs/afford_motion.yaml", ["model.text_model.name=ViT-B/32"]), str(ckpt), False)
    with pytest.raises(RunError, match="--partial"):
        check_init_from(load_config("configs/stable.yaml", ["model.text_model.name=ViT-B/32"]), str(ckpt), False)

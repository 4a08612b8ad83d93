"""Loading weights: this project's checkpoints, afford-motion's, partial loads, bad files."""

import pickle

import pytest
import torch

from cmdm.model import CMDM, CheckpointError, load_model_weights


def tiny(arch="trans_enc", seed=0, **kw):
    args = dict(arch=arch, latent_dim=32, num_layers=[1, 1], num_heads=4, dim_feedforward=64, text_dim=16,
                contact_num_tokens=8, contact_dim=16, contact_group_size=8, contact_arch="compact", num_latents=4, num_timesteps=100,
                use_cross_attn_pooling=False)
    args.update(kw)
    torch.manual_seed(seed)
    return CMDM(**args)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def afford_motion_state_dict(model):
    """A state dict laid out like afford-motion's trainer saves one from a torchrun (DDP) run:
    `module.` prefix, the sinusoidal tables as buffers, and (had its filter missed them) frozen
    CLIP / BERT / scene-model weights, which must all be ignored."""
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    sd["module.timestep_embedder.pe"] = torch.zeros(1000, 1, 32)
    sd["module.positional_encoder.pe"] = torch.zeros(5000, 1, 32)
    sd["module.text_model.token_embedding.weight"] = torch.zeros(49408, 8)
    sd["module.clip_model.ln_final.weight"] = torch.zeros(8)
    sd["module.bert_model.pooler.dense.weight"] = torch.zeros(4, 4)
    sd["module.scene_model.enc1.0.linear.weight"] = torch.zeros(4, 4)
    return sd


def test_project_checkpoint_roundtrip(tmp_path):
    src, dst = tiny(seed=0), tiny(seed=1)
    assert not same_weights(src, dst)
    path = tmp_path / "model_best.pt"
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "step": 5000,
                "config": {"model": {"arch": "trans_enc"}}, "metrics": {"fid": 0.2}}, path)
    report = load_model_weights(dst, path)
    assert same_weights(src, dst)
    assert not (report.missing or report.unexpected or report.mismatched or report.ignored)


def test_afford_motion_style_checkpoint_loads_strictly(tmp_path):
    src, dst = tiny(seed=0), tiny(seed=1)
    path = tmp_path / "model600000.pt"
    torch.save(afford_motion_state_dict(src), path)
    report = load_model_weights(dst, path)
    assert same_weights(src, dst)
    assert len(report.ignored) == 6 and not report.unexpected and not report.missing


def test_afford_motion_module_names_are_kept():
    """The trans_enc parts that afford-motion has are named as afford-motion names them."""
    keys = set(tiny().state_dict())
    for key in ("timestep_embedder.time_embed.0.weight", "timestep_embedder.time_embed.2.weight",
                "language_adapter.weight", "contact_adapter.weight", "motion_adapter.weight",
                "self_attn_layer.layers.1.self_attn.in_proj_weight", "self_attn_layer.layers.0.linear1.weight",
                "self_attn_layer.layers.0.norm2.weight", "motion_layer.bias"):
        assert key in keys, key


def test_ddp_and_compile_prefixes_and_wrapped_models():
    src, dst = tiny(seed=0), tiny(seed=1)
    sd = {f"_orig_mod.{k}": v for k, v in src.state_dict().items()}
    load_model_weights(dst, {"state_dict": sd})
    assert same_weights(src, dst)

    class Wrapper(torch.nn.Module):  # e.g. DistributedDataParallel: the model under .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    dst2 = tiny(seed=2)
    load_model_weights(Wrapper(dst2), src.state_dict())
    assert same_weights(src, dst2)


def test_strict_mismatch_is_a_clear_error():
    src, dst = tiny(seed=0), tiny(seed=1, latent_dim=48, num_heads=4)
    with pytest.raises(CheckpointError, match=r"(?s)shape-mismatched 33 .*model \(48, 48\).*partial=True"):
        load_model_weights(dst, src.state_dict())
    other_arch = tiny("dit", seed=1)
    with pytest.raises(CheckpointError, match="missing") as err:
        load_model_weights(other_arch, src.state_dict())
    assert "unexpected" in str(err.value) and "self_attn_layer" in str(err.value)


def test_partial_load_across_archs_reports_counts(capsys):
    src, dst = tiny("dit", seed=0), tiny("trans_enc", seed=1, latent_dim=32)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_model_weights(dst, {"model": src.state_dict()}, partial=True)
    printed = capsys.readouterr().out
    assert f"matched {len(report.matched)} | missing {len(report.missing)}" in printed
    assert "unexpected" in printed and "shape-mismatched" in printed
    assert "language_adapter.weight" in report.matched and "motion_adapter.weight" in report.matched
    assert "final_layer.linear.weight" in report.unexpected and any("self_attn_layer" in k for k in report.missing)
    after = dst.state_dict()
    for k in after:
        assert torch.equal(after[k], src.state_dict()[k] if k in report.matched else before[k])

    with pytest.raises(CheckpointError, match="no key"):  # something else entirely: nothing to load
        load_model_weights(dst, torch.nn.Linear(3, 3).state_dict(), partial=True)


def test_non_strict_allows_missing_but_not_shape_changes():
    src = tiny(seed=0)
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("motion_layer")}
    dst = tiny(seed=1)
    report = load_model_weights(dst, sd, strict=False)
    assert report.missing == ["motion_layer.weight", "motion_layer.bias"]
    with pytest.raises(CheckpointError):
        load_model_weights(dst, sd)  # strict


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_corrupt_file_error_names_the_file(tmp_path, content):
    path = tmp_path / "model_best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="model_best.pt"):
        load_model_weights(tiny(), path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pt"):
        load_model_weights(tiny(), path)


class Payload:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": tiny().state_dict(), "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model_weights(tiny(), path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_model_weights(tiny(), plain)


def test_wrong_content_and_missing_file(tmp_path):
    path = tmp_path / "metrics.pt"
    torch.save({"fid": 0.2, "step": 10}, path)
    with pytest.raises(CheckpointError, match="no model state_dict.*'fid'"):  # e.g. best_metrics
        load_model_weights(tiny(), path)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="Tensor"):
        load_model_weights(tiny(), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model_weights(tiny(), tmp_path / "nope.pt")

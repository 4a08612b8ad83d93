"""The guide's fork's `dit` / `dit_cross` checkpoints (github syrelink/afford-motion) load and run here.

tests/data/fork_dit_keys.json holds facts taken from the fork's own code, run in a scratch folder: the
key/shape list of its random-initialised CMDM state dicts (the guide's stable size and a small one), and
the fork's outputs for a small fixed input, with weights filled from that key list by a seeded generator
and the contact encoder's output given as an input (so they do not depend on the Point Transformer).
"""
import json
from pathlib import Path

import pytest
import torch

from cmdm.model import CMDM, load_model_weights
from cmdm.model.checkpoint import dit_settings_mismatch

FORK = json.loads((Path(__file__).parent / "data" / "fork_dit_keys.json").read_text())["configs"]

# The fork's contact_encoder is afford-motion's Point Transformer SceneMapEncoder (enc1..enc4), which is
# ours too (cmdm/model/pointtransformer.py): its keys are held to the fork's list like every other.


def fork_part(key: str) -> bool:
    """Keys of the fork's state dict this test holds ours to (buffers `*.pe` are recomputed here)."""
    return not key.endswith(".pe")


def ours(settings, K=12):
    return CMDM(arch=settings["arch"], fusion_method="adaln", latent_dim=settings["latent_dim"],
                num_layers=settings["num_layers"], num_heads=settings["num_heads"],
                dim_feedforward=settings["ff"], text_dim=512, contact_num_tokens=K, contact_dim=256,
                num_latents=1, dit_use_cross_attn_pooling=settings.get("dit_use_cross_attn_pooling", True))


def fork_state(entry, seed=0):
    """A state dict in the fork's layout: its keys and shapes, values from a seeded generator, in
    key-list order (the fill the golden outputs were made with)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in entry["keys"]
            if not (k.startswith("contact_encoder.") or k.endswith(".pe"))}


@pytest.mark.parametrize("name", sorted(FORK))
def test_fork_equivalent_settings_give_the_fork_module_set(name):
    entry = FORK[name]
    model = ours(entry["settings"])
    theirs = {k: tuple(s) for k, s in entry["keys"] if fork_part(k)}
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items() if fork_part(k)}
    assert mine == theirs


@pytest.mark.parametrize("prefix", ["", "module."])
@pytest.mark.parametrize("name", sorted(FORK))
def test_fork_state_dict_loads_strictly(name, prefix):
    entry = FORK[name]
    model = ours(entry["settings"])
    state = fork_state(entry)
    g = torch.Generator().manual_seed(1)  # the Point Transformer's part (not in the golden fill)
    state.update({k: torch.randn(shape, generator=g).abs() for k, shape in entry["keys"]
                  if k.startswith("contact_encoder.")})
    state = {prefix + k: v for k, v in state.items()}
    state[prefix + "positional_encoder.pe"] = torch.zeros(5000, 1, entry["settings"]["latent_dim"])  # the fork saves it
    report = load_model_weights(model, state, strict=True)
    assert not report.missing and not report.unexpected and not report.mismatched
    assert report.ignored == [prefix + "positional_encoder.pe"]
    assert dit_settings_mismatch(state, _cfg(entry["settings"]))[1:] == []  # [0]: the text model (CLIP, 512-d)


@pytest.mark.parametrize("name", [n for n in sorted(FORK) if "golden" in FORK[n]])
def test_forward_equals_the_forks(name):
    entry, gold = FORK[name], FORK[name]["golden"]
    B, T, K = gold["B"], gold["T"], gold["K"]
    model = ours(entry["settings"], K).eval()
    load_model_weights(model, fork_state(entry, gold["seed"]), strict=False)
    g = torch.Generator().manual_seed(gold["seed"] + 1)
    x, text = torch.randn(B, T, 263, generator=g), torch.randn(B, 512, generator=g)
    contact_feat = torch.randn(B, K, 256, generator=g)          # the contact encoder's output
    t, lengths = torch.tensor([3, 977]), torch.tensor([T, T // 2])
    mask = torch.arange(T)[None] < lengths[:, None]
    with torch.no_grad():
        cond = model.fuse_conditions(text[:, None], torch.zeros(B, 1, dtype=torch.bool), contact_feat)
        out = model(x, t, cond, mask)
    got = torch.stack([out[b, f] for b, f in gold["frames"]])
    assert torch.allclose(got, torch.tensor(gold["outputs"]), atol=1e-5, rtol=0)
    assert out[mask].sum().item() == pytest.approx(gold["valid_sum"], abs=1e-3)


def _cfg(settings, **ce):
    from cmdm.config import load_config
    over = [f"model.arch={settings['arch']}", f"model.latent_dim={settings['latent_dim']}",
            f"model.num_layers={settings['num_layers']}".replace(" ", ""), f"model.num_heads={settings['num_heads']}",
            f"model.dim_feedforward={settings['ff']}",
            f"model.dit_use_cross_attn_pooling={str(settings.get('dit_use_cross_attn_pooling', True)).lower()}",
            f"model.condition_embedder.num_latents={ce.get('num_latents', 1)}",
            f"model.condition_embedder.fusion_method={ce.get('fusion_method', 'adaln')}"]
    return load_config(None, over).model


def test_other_settings_name_what_the_fork_checkpoint_needs():
    entry = FORK["dit_small"]
    need = dit_settings_mismatch(fork_state(entry), _cfg(entry["settings"], num_latents=64, fusion_method="cross_attn"))
    assert need[0].startswith("model.text_model.name=<a text model with 512-d features")  # default: MiniLM, 384-d
    assert need[1:] == ["model.condition_embedder.num_latents=1", "model.condition_embedder.fusion_method=adaln"]
    cross = FORK["dit_cross_small"]
    assert dit_settings_mismatch(fork_state(cross), _cfg(entry["settings"]))[1:] == ["model.arch=dit_cross"]


def test_stable_yaml_builds_the_forks_dit():
    """configs/stable.yaml is the fork's model: its state dict has the fork's keys and shapes (the text
    adapter's input width is the text model's: 512 for CLIP, 384 for the MiniLM this test builds with)."""
    from cmdm.config import load_config
    from cmdm.model import build_model
    cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "stable.yaml"),
                      ["model.text_model.name=all-minilm-l6-v2"])
    mine = {k: tuple(v.shape) for k, v in build_model(cfg, load_text_encoder=False).state_dict().items()
            if fork_part(k)}
    theirs = {k: tuple(s) for k, s in FORK["dit_stable"]["keys"] if fork_part(k)}
    assert theirs.pop("language_adapter.weight") == (512, 512) and mine.pop("language_adapter.weight") == (512, 384)
    assert mine == theirs

"""Helpers shared by the afford-motion layout tests (and by the scratch comparison that recorded
tests/data/afford_motion_cmdm_golden.npz from afford-motion's own CMDM on the same rule)."""

import json
import os

import torch

DATA = os.path.join(os.path.dirname(__file__), "data")
KEYS_FILE = os.path.join(DATA, "afford_motion_cmdm_keys.json")
GOLDEN_FILE = os.path.join(DATA, "afford_motion_cmdm_golden.npz")
GOLDEN_POINTS, GOLDEN_BATCH, GOLDEN_FRAMES = 1024, 2, 12


def official_keys() -> list:
    with open(KEYS_FILE) as f:
        return json.load(f)["keys"]


def official_cmdm(num_points: int = 8192):
    """Our CMDM in afford-motion's trans_enc layout (contacts on, CLIP 512-d text features)."""
    from cmdm.model.cmdm import CMDM
    return CMDM(arch="trans_enc", latent_dim=512, num_layers=[1] * 5, num_heads=8, dim_feedforward=1024,
                dropout=0.1, text_dim=512, use_contacts=True, contact_in_dim=9, use_cross_attn_pooling=False,
                contact_arch="point_transformer", contact_num_points=num_points)


def rule_tensor(index: int, key: str, shape, dtype: str) -> torch.Tensor:
    """A deterministic stand-in for trained weights: the key's position seeds its values."""
    if dtype != "float32":
        return torch.zeros(shape, dtype=getattr(torch, dtype))
    u = torch.rand(shape, generator=torch.Generator().manual_seed(1000 + index)) * 2 - 1
    if key.endswith("running_var"):
        return 1.25 + 0.75 * u
    if key.endswith("running_mean"):
        return 0.5 * u
    scale = 1.0 / (shape[-1] ** 0.5) if len(shape) >= 2 else 0.1
    return u * scale


def rule_state_dict(prefix: str = "") -> dict:
    """An official-layout state dict (every key of the list, its shape) filled by `rule_tensor`."""
    return {prefix + e["key"]: rule_tensor(i, e["key"], e["shape"], e["dtype"])
            for i, e in enumerate(official_keys())}


def golden_inputs():
    """Fixed inputs: sample 0 has every point exactly duplicated, sample 1 some points on a grid."""
    B, N, T = GOLDEN_BATCH, GOLDEN_POINTS, GOLDEN_FRAMES
    g = torch.Generator().manual_seed(1)
    xyz = torch.rand(B, N, 3, generator=g) * 4
    xyz[0, N // 2:] = xyz[0, :N // 2]
    xyz[1, ::7] = torch.round(xyz[1, ::7] * 2) / 2
    contact = torch.rand(B, N, 6, generator=g)
    text = torch.randn(B, 512, generator=g)
    x = torch.randn(B, T, 263, generator=g)
    t = torch.tensor([3, 700])
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 9:] = False
    return xyz, contact, text, x, t, mask

"""The compact contact (affordance) map encoder (model.contact_model.arch=compact): N scene points -> K tokens.

A small stand-in for afford-motion's Point Transformer (cmdm/model/pointtransformer.py, the
default), sized for CPU demos (configs/demo.yaml); its weights are not afford-motion's.

afford-motion encodes the contact map with a Point Transformer whose neighbourhood queries
need the CUDA-only `pointops` extension. This encoder keeps its interface (points with
xyz + per-joint contact channels in, K = contact_num_tokens tokens of width contact_dim out;
afford-motion: 8192 points -> 128 x 256) with operations that run on any device:

  1. farthest point sampling picks K well-spread centres (no gradient; indices only),
  2. each centre gathers its `group_size` nearest points (a PointNet++ set abstraction):
     a shared MLP embeds (xyz relative to the centre, contact channels) and a max over the
     group keeps the strongest response, so a small patch of high contact is not averaged away;
     the projection to contact_dim comes after the max, on K tokens instead of K x group points
     (5x fewer FLOPs and memory than projecting every point),
  3. the centre's absolute position and contacts are added, and one self-attention layer lets
     the K tokens see the whole scene (the hierarchy of the Point Transformer does this
     through its coarser levels).
"""

import torch
import torch.nn as nn

from cmdm.model.blocks import Attention, Mlp


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, k: int):
    """(B, N, 3) points -> (B, k) centre indices and (B, k, N) squared centre-point distances.

    Starts at point 0 (deterministic given the point order), then repeatedly takes the point
    farthest from the chosen set. Each iteration computes the new centre's distance to every
    point anyway; keeping those rows gives the k-nearest-neighbour search for free.
    """
    B, N, _ = xyz.shape
    if k > N:
        raise ValueError(f"cannot pick {k} centres from {N} points: give more contact points "
                         f"(data.contact_num_points) or fewer tokens (contact_num_tokens)")
    coords = xyz.transpose(1, 2).contiguous()                 # (B, 3, N): reductions over 3 rows
    idx = torch.zeros(B, k, dtype=torch.long, device=xyz.device)
    dists = torch.empty(B, k, N, device=xyz.device, dtype=xyz.dtype)
    nearest = torch.full((B, N), float("inf"), device=xyz.device, dtype=xyz.dtype)
    farthest = torch.zeros(B, dtype=torch.long, device=xyz.device)
    batch = torch.arange(B, device=xyz.device)
    for i in range(k):
        idx[:, i] = farthest
        centre = xyz[batch, farthest].unsqueeze(-1)           # (B, 3, 1)
        dists[:, i] = ((coords - centre) ** 2).sum(1)
        nearest = torch.minimum(nearest, dists[:, i])
        farthest = nearest.argmax(-1)
    return idx, dists


def gather_points(feats: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """feats (B, N, C), idx (B, ...) -> (B, ..., C)."""
    B, C = feats.shape[0], feats.shape[-1]
    flat = idx.reshape(B, -1, 1).expand(-1, -1, C)
    return feats.gather(1, flat).reshape(*idx.shape, C)


class ContactEncoder(nn.Module):
    """Contact map (B, N, 3 + C) -> (B, num_tokens, out_dim) tokens.

    in_dim = 3 + C: xyz then C contact channels exp(-0.5 d^2 / sigma^2), one per contact joint
    (afford-motion: 6 joints, in_dim 9).
    """

    def __init__(self, in_dim: int = 9, num_tokens: int = 128, out_dim: int = 256,
                 group_size: int = 32, hidden: int = 128, num_heads: int | None = None):
        super().__init__()
        self.in_dim, self.num_tokens, self.out_dim, self.group_size = in_dim, num_tokens, out_dim, group_size
        # Shared point MLP over (relative xyz, contacts) of each grouped point; max-pooled, then projected.
        self.point_mlp = nn.Sequential(
            nn.Linear(in_dim, hidden // 2), nn.GELU(),
            nn.Linear(hidden // 2, hidden), nn.GELU())
        self.group_proj = nn.Linear(hidden, out_dim)
        self.centre_embed = nn.Linear(in_dim, out_dim)
        heads = num_heads or max(1, out_dim // 64)
        self.norm1 = nn.LayerNorm(out_dim)
        self.attn = Attention(out_dim, heads)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = Mlp(out_dim, 2 * out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, contact: torch.Tensor) -> torch.Tensor:
        if contact.shape[-1] != self.in_dim:
            raise ValueError(f"contact map has {contact.shape[-1]} channels per point, the encoder "
                             f"expects {self.in_dim} (xyz + one channel per contact joint)")
        xyz = contact[..., :3]
        centre_idx, dists = farthest_point_sample(xyz, self.num_tokens)     # (B, K), (B, K, N)
        centres = gather_points(contact, centre_idx)                        # (B, K, in_dim)
        group_idx = dists.topk(min(self.group_size, contact.shape[1]), dim=-1, largest=False).indices
        group = gather_points(contact, group_idx)                           # (B, K, g, in_dim)
        rel = torch.cat([group[..., :3] - centres[..., None, :3], group[..., 3:]], dim=-1)
        x = self.group_proj(self.point_mlp(rel).max(dim=2).values) + self.centre_embed(centres)  # (B, K, out_dim)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.norm_out(x)


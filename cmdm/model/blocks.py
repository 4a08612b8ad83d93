"""Building blocks of the CMDM denoiser: embeddings, attention, DiT blocks, latent pooling.

Masks follow one convention inside the model: `pad` is a bool tensor that is True where a
token is padding (PyTorch's `key_padding_mask` convention). The public model API takes the
dataset's `mask` (True on valid frames) and flips it once, in `CMDM.forward`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# Sinusoidal tables and the two embedders that use them (afford-motion / MDM layout)
# --------------------------------------------------------------------------------------------

def sinusoidal_table(length: int, dim: int) -> torch.Tensor:
    """(length, dim) table: sin on even channels, cos on odd, wavelengths 2pi .. 10000*2pi."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal table to a (B, S, D) sequence, then dropout (afford-motion uses 0.1).

    The table is a non-persistent buffer: it is recomputed, never saved, so checkpoints that do
    carry it (afford-motion's `positional_encoder.pe`) are skipped by the loader, not required.
    """

    def __init__(self, dim: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.register_buffer("pe", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        return self.dropout(x + self.pe[offset: offset + x.shape[1]])


class TimestepEmbedder(nn.Module):
    """Integer timestep -> sinusoidal row -> Linear -> SiLU -> Linear: one latent_dim vector."""

    def __init__(self, dim: int, num_timesteps: int = 1000, freq_dim: int | None = None):
        super().__init__()
        freq_dim = freq_dim or dim
        self.register_buffer("pe", sinusoidal_table(num_timesteps, freq_dim), persistent=False)
        # Same module names as afford-motion (time_embed.0 / time_embed.2) so its weights load.
        self.time_embed = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embed(self.pe[t])  # (B, D)


# --------------------------------------------------------------------------------------------
# Dropout, attention, MLP, stochastic depth
# --------------------------------------------------------------------------------------------

class Dropout(nn.Dropout):
    """nn.Dropout with a faster CPU path; same maths (inverted dropout), same module name.

    On CPU, ATen's dropout draws its mask with bernoulli_, which made dropout ~10% of a training
    step; a uniform draw compared with p, folded into one float scale, is ~3x faster forward +
    backward. Other devices keep PyTorch's fused kernel.
    """

    def forward(self, x):
        if not self.training or not 0.0 < self.p < 1.0 or x.device.type != "cpu":
            return super().forward(x)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))
        return x * keep


class Attention(nn.Module):
    """Multi-head attention on F.scaled_dot_product_attention; self- or cross-attention.

    Self-attention uses one fused qkv projection (one GEMM instead of three); cross-attention
    projects queries from `x` and keys/values from `context`. Dropout acts on the output
    projection (timm's proj_drop), not on the attention weights: dropping weights forces
    PyTorch's unfused attention and a (B, H, S, S) random mask, about 10% of a CPU training step.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, cross: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.cross = num_heads, cross
        if cross:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = Dropout(dropout)

    def forward(self, x, context=None, pad=None):
        B, S, D = x.shape
        H = self.num_heads
        if self.cross:
            q = self.q(x).view(B, S, H, D // H).transpose(1, 2)
            k, v = self.kv(context).view(B, context.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(x).view(B, S, 3, H, D // H).permute(2, 0, 3, 1, 4)
        mask = None if pad is None else ~pad[:, None, None, :]  # SDPA: True = may attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, S, D)))


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear: the transformer feed-forward (afford-motion: GELU)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples with probability p (train only).

    Kept samples are scaled by 1/(1-p) so the expected branch output equals the eval output.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self):
        return f"p={self.p}"


# --------------------------------------------------------------------------------------------
# DiT blocks with adaLN-Zero
# --------------------------------------------------------------------------------------------

def modulate(x, shift, scale):
    """adaLN: per-sample affine x * (1 + scale) + shift of a normalised (B, S, D) sequence;
    shift and scale are (B, 1, D)."""
    return torch.addcmul(shift, x, 1 + scale)  # one fused pass over x


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by the conditioning vector `c`.

    Sub-layers: self-attention over the sequence, optional cross-attention to condition tokens
    (fusion_method='cross_attn'), MLP. Each has a (shift, scale, gate) triple regressed from `c`.
    """

    def __init__(self, dim, num_heads, ff_dim, dropout=0.0, drop_path=0.0, cross_attn=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads, dropout)
        self.cross_attn = cross_attn
        if cross_attn:
            self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.cross = Attention(dim, num_heads, dropout, cross=True)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, ff_dim, dropout)
        self.drop_path = DropPath(drop_path)
        self.num_mod = 9 if cross_attn else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.num_mod * dim))
        # adaLN-Zero: the regression of (shift, scale, gate) starts at exactly zero, so every gate
        # is 0 and the block is the identity at init; training opens the residual branches.
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x, c, pad=None, context=None, context_pad=None):
        mod = self.adaLN_modulation(c).unsqueeze(1).chunk(self.num_mod, dim=-1)  # each (B, 1, D)
        # x + drop_path(gate * branch): stochastic depth scales whole samples, so it is applied
        # to the (B, 1, D) gate rather than to the (B, S, D) branch output: same result, no
        # full-size mask. addcmul fuses the gating product and the residual sum.
        shift, scale, gate = mod[0:3]
        h = self.attn(modulate(self.norm1(x), shift, scale), pad=pad)
        x = torch.addcmul(x, self.drop_path(gate), h)
        if self.cross_attn:
            shift, scale, gate = mod[3:6]
            h = self.cross(modulate(self.norm2(x), shift, scale), context=context, pad=context_pad)
            x = torch.addcmul(x, self.drop_path(gate), h)
        shift, scale, gate = mod[-3:]
        h = self.mlp(modulate(self.norm3(x), shift, scale))
        return torch.addcmul(x, self.drop_path(gate), h)


class FinalLayer(nn.Module):
    """adaLN-modulated norm, then Linear to the motion features; zero-initialised (DiT)."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)
        # Zero output at init: the untrained denoiser predicts x0 = 0 (the data mean after
        # normalisation), the safest first guess; gradients still reach it through the bias.
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------------------------
# Perceiver-style latent pooling
# --------------------------------------------------------------------------------------------

class LatentPooler(nn.Module):
    """`num_latents` learned queries cross-attend a token set: N tokens in, num_latents out.

    One Perceiver cross-attention block (pre-norm cross-attention + MLP, residual on the
    latents). The output length no longer depends on the input (128 contact tokens, or a
    variable number of text tokens), and padded input tokens are never attended.
    """

    def __init__(self, dim, num_latents, num_heads, ff_dim, dropout=0.0):
        super().__init__()
        # Latents start small and random (std 0.02, as ViT/DiT position tables) so the queries
        # differ from one another and attend differently from the first step.
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout, cross=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, ff_dim, dropout)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, tokens, pad=None):
        q = self.latents.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        q = q + self.attn(self.norm_q(q), context=self.norm_kv(tokens), pad=pad)
        q = q + self.mlp(self.norm_mlp(q))
        return self.norm_out(q)

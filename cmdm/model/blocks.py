"""Building blocks of the CMDM denoiser: embeddings, attention, DiT blocks, condition pooling.

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
# DiT blocks with adaLN-Zero: the guide's fork (syrelink/afford-motion, models/trick/dit_block.py)
# --------------------------------------------------------------------------------------------
# Module names and maths follow that fork so its `dit` / `dit_cross` checkpoints load strictly
# and give its forward pass: attention is nn.MultiheadAttention (dropout on the attention
# weights, fused `in_proj`), the MLP drops after GELU and after fc2, stochastic depth drops
# whole samples of each gated branch.

def modulate(x, shift, scale):
    """adaLN: per-sample affine x * (1 + scale) + shift of a normalised (B, S, D) sequence;
    shift and scale are (B, 1, D)."""
    return torch.addcmul(shift, x, 1 + scale)  # one fused pass over x


class DiTMlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (the fork's MLP)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


def _zero_init_(linear: nn.Linear):
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)


class DiTBlock(nn.Module):
    """adaLN-Zero block over one sequence: self-attention and MLP, each with a (shift, scale,
    gate) triple regressed from the condition vector `c` (the fork's `dit` block).

    adaLN-Zero: the regression starts at exactly zero, so every gate is 0 and the block is the
    identity at init; training opens the residual branches.
    """

    def __init__(self, dim, num_heads, ff_dim, dropout=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.mlp = DiTMlp(dim, ff_dim, dropout)
        self.drop_path = DropPath(drop_path)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        _zero_init_(self.adaLN_modulation[-1])

    def forward(self, x, c, pad=None):
        shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift_attn, scale_attn)
        h = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        # x + gate * drop_path(branch): stochastic depth scales whole samples, so it is applied
        # to the (B, 1, D) gate: same result, no full-size mask.
        x = torch.addcmul(x, self.drop_path(gate_attn), h)
        h = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return torch.addcmul(x, self.drop_path(gate_mlp), h)


class DiTCrossBlock(nn.Module):
    """adaLN block with cross-attention to context tokens between self-attention and MLP
    (the fork's `dit_cross` block, DiTBlockWithCrossAttention).

    As in the fork: 8 modulation chunks (shift, scale, gate for self- and cross-attention, shift
    and scale for the MLP, whose branch is not gated), and the context is layer-normalised with
    a learned affine (`norm_context`) before it is attended.
    """

    def __init__(self, dim, num_heads, ff_dim, dropout=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm_context = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.mlp = DiTMlp(dim, ff_dim, dropout)
        self.drop_path = DropPath(drop_path)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 8 * dim))
        _zero_init_(self.adaLN_modulation[-1])

    def forward(self, x, c, pad=None, context=None, context_pad=None):
        (shift_self, scale_self, gate_self, shift_cross, scale_cross, gate_cross,
         shift_mlp, scale_mlp) = self.adaLN_modulation(c).unsqueeze(1).chunk(8, dim=-1)
        h = modulate(self.norm1(x), shift_self, scale_self)
        h = self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        x = torch.addcmul(x, self.drop_path(gate_self), h)
        ctx = self.norm_context(context)
        h = modulate(self.norm2(x), shift_cross, scale_cross)
        h = self.cross_attn(h, ctx, ctx, key_padding_mask=context_pad, need_weights=False)[0]
        x = torch.addcmul(x, self.drop_path(gate_cross), h)
        return x + self.drop_path(self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN-modulated norm, then Linear to the motion features; zero-initialised (DiT).

    Zero output at init: the untrained denoiser predicts x0 = 0 (the data mean after
    normalisation), the safest first guess; gradients still reach it through the bias.
    """

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        _zero_init_(self.adaLN_modulation[-1])
        _zero_init_(self.linear)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class ConditionEmbedder(nn.Module):
    """time + text + contact -> the one condition vector `c` that modulates every DiT block.

    The contact tokens (B, K, D) are first pooled to one vector: by `num_latents` learned
    queries cross-attending them (`contact_query`, `contact_attn` with 8 heads, `contact_norm`;
    the latents' outputs are averaged), or by a mean over the tokens (pooling=False). Then
    `proj` = Linear(3D, D) -> SiLU -> Linear(D, D) maps [time, text, pooled contact] to `c`.
    num_latents=1 is exactly the fork's ConditionEmbedder; more latents are this project's
    extension (several queries read the scene, and `pool` also returns them as tokens for the
    blocks to attend). Without contacts `proj` reads [time, text] (2D).
    """

    POOL_HEADS = 8   # the fork's, whatever model.num_heads is

    def __init__(self, dim: int, num_latents: int = 1, pooling: bool = True, use_contacts: bool = True):
        super().__init__()
        self.pooling = pooling and use_contacts
        if self.pooling:
            if dim % self.POOL_HEADS:
                raise ValueError(f"latent_dim {dim} must be a multiple of {self.POOL_HEADS} "
                                 f"(the contact pooling attention has {self.POOL_HEADS} heads)")
            # Queries start small and random (std 0.02, the fork's), so they differ from one another.
            self.contact_query = nn.Parameter(torch.randn(1, num_latents, dim) * 0.02)
            self.contact_attn = nn.MultiheadAttention(dim, self.POOL_HEADS, batch_first=True)
            self.contact_norm = nn.LayerNorm(dim)
        n_inputs = 3 if use_contacts else 2
        self.proj = nn.Sequential(nn.Linear(n_inputs * dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def pool(self, contact_tok, pad=None):
        """(B, K, D) contact tokens -> pooled vector (B, D) and the tokens it summarises:
        the num_latents query outputs (pooling) or the K tokens themselves (mean)."""
        if self.pooling:
            query = self.contact_query.expand(contact_tok.shape[0], -1, -1)
            latents = self.contact_attn(query, contact_tok, contact_tok, key_padding_mask=pad,
                                        need_weights=False)[0]
            latents = self.contact_norm(latents)
            return latents.mean(1), latents
        if pad is None:
            return contact_tok.mean(1), contact_tok
        valid = (~pad).to(contact_tok.dtype).unsqueeze(-1)
        return (contact_tok * valid).sum(1) / valid.sum(1).clamp(min=1.0), contact_tok

    def forward(self, t_emb, text_vec, contact_vec=None):
        parts = [t_emb, text_vec] + ([contact_vec] if contact_vec is not None else [])
        return self.proj(torch.cat(parts, dim=-1))


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

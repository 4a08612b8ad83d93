"""CMDM: the text- and contact-conditioned motion denoiser of afford-motion, three bodies.

    model = build_model(cfg)                                   # cfg: cmdm.config.Config
    cond = model.encode_conditions(texts, contact)             # once per batch
    x0_hat = model(x_t, t, cond, mask)                         # (B, T, 263), every step

Conditions are encoded once and reused at every diffusion step: `cond` is a dict with
  text_vec (B, D)   the pooled text feature (mean over valid tokens; the one pooled token for CLIP),
  contact_vec (B, D) DiT only: the pooled contact vector that joins c,
  tokens   (B, S, D) the condition tokens: text (1 pooled or L per-token) then contact tokens
                    (dit_cross: the contact tokens only),
  pad      (B, S)   True where a condition token is padding,
plus `_`-prefixed raw features from which `null_conditions` builds the unconditional twin.

Contact encoder (`contact_arch`, config model.contact_model.arch):
  point_transformer  afford-motion's SceneMapEncoder (pointtransformer.py): N/64 tokens x planes[-1];
  compact            a small PointNet++-style encoder for CPU demos (condition.py).

Bodies (`arch`):
  trans_enc  afford-motion's: one sequence [time(1), text(1|L), contact(K), motion(T)],
             sinusoidal positions over all of it, post-norm nn.TransformerEncoder (GELU),
             key padding for padded frames and text padding, motion tokens -> Linear -> 263.
             Module names match afford-motion's, so its trained weights load strictly
             (checkpoint.py) with the point_transformer contact encoder and no contact pooling.
             condition_embedder.use_cross_attn_pooling + num_latents pool the K contact tokens
             with `num_latents` learned latents (Perceiver cross-attention) before they join;
             fusion_method and the dit_* keys do not apply.
  dit        the guide's fork (syrelink/afford-motion, arch 'dit'): DiT blocks (`dit_blocks`)
             over the motion tokens (sinusoidal positions on the motion only), adaLN-Zero
             modulated by one condition vector c = cond_embedder([time, text, pooled contact]);
             `final_layer` maps to 263. The contact tokens are pooled by cross-attention of
             `num_latents` learned queries (dit_use_cross_attn_pooling=true) or by their mean.
             condition_embedder.fusion_method says how else the blocks reach the conditions:
               adaln       only through c: the fork's `dit`;
               cross_attn  (extension) every block also cross-attends the condition tokens
                           [text(1|L), pooled contact latents] (the fork's dit_cross block);
               concat      (extension) those tokens join the motion sequence in self-attention.
             With num_latents=1 and fusion_method=adaln the module set, names and forward pass
             are the fork's, so its checkpoints load strictly; more latents average their
             outputs into c (and give as many tokens to attend).
  dit_cross  the fork's 'dit_cross': c = cond_embedder([time, text, mean of the contact tokens]),
             every block cross-attends all K contact tokens; exactly the fork's module (num_latents,
             fusion_method and dit_use_cross_attn_pooling do not apply; it needs contacts).
  Both DiT archs carry the fork's `motion_layer` (a Linear the fork builds but never uses),
  frozen, only so that the fork's state dicts load strictly.

Condition dropout (classifier-free guidance) erases a condition the way afford-motion does:
the raw text feature / the contact-encoder output is multiplied by 0 before its adapter, so the
"null" condition is the adapter's bias, a learned constant. Masks are sampled by
`sample_drop_masks` (the training loop calls `encode_batch(batch, cfg_dropout=True)`).
"""

import torch
import torch.nn as nn

from cmdm.model.blocks import (ConditionEmbedder, DiTBlock, DiTCrossBlock, FinalLayer, LatentPooler,
                               PositionalEncoding, TimestepEmbedder)
from cmdm.model.condition import ContactEncoder
from cmdm.model.pointtransformer import SceneMapEncoder
from cmdm.model.text import TextEncoder

MOTION_DIM = 263       # HumanML3D feature vector
MINILM_DIM = 384       # width of the built-in text encoder
# Feature widths of the published text models the configs name, for a model built without its text encoder
# (load_text_encoder=False: features precomputed, e.g. bench/bench_model.py), where their files are not on disk.
KNOWN_TEXT_WIDTHS = {"all-minilm-l6-v2": MINILM_DIM,
                     "openai/clip-vit-base-patch32": 512}   # CLIP ViT-B/32: projection_dim 512


class CMDM(nn.Module):
    def __init__(self, *, motion_dim: int = MOTION_DIM, arch: str = "dit", latent_dim: int = 512,
                 num_layers=5, num_heads: int = 8, dim_feedforward: int = 1024, dropout: float = 0.15,
                 dit_drop_path: float = 0.05, dit_use_cross_attn_pooling: bool = True,
                 fusion_method: str = "cross_attn", text_encoder: TextEncoder | None = None,
                 text_dim: int | None = None, use_contacts: bool = True, contact_in_dim: int = 9,
                 contact_num_tokens: int = 128, contact_dim: int = 256, contact_group_size: int = 32,
                 contact_arch: str = "point_transformer", contact_planes=(32, 64, 128, 256),
                 contact_blocks=(2, 2, 2, 2), contact_num_points: int = 8192,
                 use_cross_attn_pooling: bool = True, num_latents: int = 64,
                 text_drop_prob: float = 0.1, contact_drop_prob: float = 0.1,
                 num_timesteps: int = 1000, pos_dropout: float = 0.1):
        super().__init__()
        if arch not in ("trans_enc", "dit", "dit_cross"):
            raise ValueError(f"arch must be 'trans_enc', 'dit' or 'dit_cross', got {arch!r}")
        if fusion_method not in ("adaln", "cross_attn", "concat"):
            raise ValueError(f"fusion_method must be 'adaln', 'cross_attn' or 'concat', got {fusion_method!r}")
        if arch == "dit_cross" and not use_contacts:
            raise ValueError("arch 'dit_cross' cross-attends the contact tokens: it needs use_contacts=True")
        if text_encoder is None and text_dim is None:
            raise ValueError("give a text_encoder, or text_dim when captions arrive as features")
        depth = sum(num_layers) if isinstance(num_layers, (list, tuple)) else int(num_layers)
        self.arch, self.fusion_method, self.latent_dim, self.motion_dim = arch, fusion_method, latent_dim, motion_dim
        self.use_contacts = use_contacts
        self.text_drop_prob, self.contact_drop_prob = text_drop_prob, contact_drop_prob
        # A plain attribute, not a submodule: frozen, shared, outside state_dict and optimiser.
        self.text_encoder = text_encoder
        self.text_dim = text_encoder.dim if text_encoder is not None else text_dim
        D = latent_dim

        # ---- conditions --------------------------------------------------------------------
        self.timestep_embedder = TimestepEmbedder(D, num_timesteps)
        self.language_adapter = nn.Linear(self.text_dim, D)
        if use_contacts:
            if contact_arch == "point_transformer":
                # afford-motion's encoder: N/64 tokens of width planes[-1] (contact_num_tokens and
                # contact_dim follow from it; config.py checks they agree).
                self.contact_encoder = SceneMapEncoder(contact_in_dim - 3, list(contact_planes),
                                                       list(contact_blocks), contact_num_points)
                contact_dim = contact_planes[-1]
            elif contact_arch == "compact":
                self.contact_encoder = ContactEncoder(contact_in_dim, contact_num_tokens, contact_dim,
                                                      group_size=contact_group_size)
            else:
                raise ValueError(f"contact_arch must be 'point_transformer' or 'compact', got {contact_arch!r}")
            self.contact_adapter = nn.Linear(contact_dim, D)
            if use_cross_attn_pooling and arch == "trans_enc":
                self.contact_pooler = LatentPooler(D, num_latents, num_heads, dim_feedforward, dropout)

        # ---- body --------------------------------------------------------------------------
        self.motion_adapter = nn.Linear(motion_dim, D)
        if arch == "trans_enc":
            self.positional_encoder = PositionalEncoding(D, dropout=pos_dropout)
            layer = nn.TransformerEncoderLayer(D, num_heads, dim_feedforward, dropout,
                                               activation="gelu", batch_first=True)
            self.self_attn_layer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.motion_layer = nn.Linear(D, motion_dim)
        else:
            self.positional_encoder = PositionalEncoding(D, dropout=pos_dropout)
            self.cond_embedder = ConditionEmbedder(
                D, num_latents, pooling=dit_use_cross_attn_pooling and arch == "dit", use_contacts=use_contacts)
            # Stochastic depth grows linearly with depth, 0 at the first block (the fork's rule).
            rates = [dit_drop_path * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0]
            cross = arch == "dit_cross" or fusion_method == "cross_attn"
            block = DiTCrossBlock if cross else DiTBlock
            self.dit_blocks = nn.ModuleList(block(D, num_heads, dim_feedforward, dropout, rate) for rate in rates)
            self.final_layer = FinalLayer(D, motion_dim)
            # The fork builds this output head for every arch but its DiTs never use it; it is
            # kept (frozen: no gradient, no optimiser state, no DDP unused-parameter error) so the
            # fork's state dicts load strictly.
            self.motion_layer = nn.Linear(D, motion_dim).requires_grad_(False)

    # ----------------------------------------------------------------------------------------
    # construction from the typed config
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, model_cfg, *, use_contacts: bool = True, contact_channels: int = 6,
                    num_timesteps: int = 1000, motion_dim: int = MOTION_DIM,
                    load_text_encoder: bool = True, contact_num_points: int = 8192) -> "CMDM":
        """CMDM from `cfg.model`; the data-side facts come as arguments (see build_model)."""
        tm, ce = model_cfg.text_model, model_cfg.condition_embedder
        text_encoder, text_dim = None, None
        if load_text_encoder:
            text_encoder = TextEncoder(tm.name, tm.max_length, tm.output)
        elif tm.name.lower() in KNOWN_TEXT_WIDTHS:
            text_dim = KNOWN_TEXT_WIDTHS[tm.name.lower()]
        else:
            raise ValueError(f"load_text_encoder=False needs a text model of known width ({', '.join(KNOWN_TEXT_WIDTHS)})")
        return cls(motion_dim=motion_dim, arch=model_cfg.arch, latent_dim=model_cfg.latent_dim,
                   num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
                   dim_feedforward=model_cfg.dim_feedforward, dropout=model_cfg.dropout,
                   dit_drop_path=model_cfg.dit_drop_path,
                   dit_use_cross_attn_pooling=model_cfg.dit_use_cross_attn_pooling,
                   fusion_method=ce.fusion_method, text_encoder=text_encoder, text_dim=text_dim,
                   use_contacts=use_contacts, contact_in_dim=3 + contact_channels,
                   contact_num_tokens=ce.contact_num_tokens, contact_dim=ce.contact_dim,
                   contact_arch=model_cfg.contact_model.arch, contact_planes=model_cfg.contact_model.planes,
                   contact_blocks=model_cfg.contact_model.blocks, contact_num_points=contact_num_points,
                   use_cross_attn_pooling=ce.use_cross_attn_pooling, num_latents=ce.num_latents,
                   text_drop_prob=model_cfg.text_drop_prob, contact_drop_prob=model_cfg.contact_drop_prob,
                   num_timesteps=num_timesteps)

    @property
    def device(self) -> torch.device:
        return self.motion_adapter.weight.device

    # ----------------------------------------------------------------------------------------
    # conditions: encoded once per batch
    # ----------------------------------------------------------------------------------------

    def sample_drop_masks(self, batch_size: int, generator: torch.Generator | None = None):
        """Classifier-free dropout masks (True = erase): text with text_drop_prob, contact with
        contact_drop_prob, independently (afford-motion's RandomEraseLang / RandomEraseContact)."""
        g_dev = generator.device if generator is not None else self.device
        drop_text = torch.rand(batch_size, generator=generator, device=g_dev) < self.text_drop_prob
        drop_contact = None
        if self.use_contacts:
            drop_contact = torch.rand(batch_size, generator=generator, device=g_dev) < self.contact_drop_prob
            drop_contact = drop_contact.to(self.device)
        return drop_text.to(self.device), drop_contact

    def encode_batch(self, batch: dict, cfg_dropout: bool = False, generator=None) -> dict:
        """`encode_conditions` on a dataset batch; with cfg_dropout, conditions are randomly erased."""
        drop_text = drop_contact = None
        if cfg_dropout:
            drop_text, drop_contact = self.sample_drop_masks(len(batch["text"]), generator)
        contact = batch.get("contact")
        if contact is not None:
            contact = contact.to(self.device, non_blocking=True)
        return self.encode_conditions(batch["text"], contact, drop_text, drop_contact)

    def encode_conditions(self, texts, contact: torch.Tensor | None = None,
                          drop_text: torch.Tensor | None = None,
                          drop_contact: torch.Tensor | None = None) -> dict:
        """Condition dict for `forward`.

        texts: list of captions (run through the frozen text encoder, cached per caption), or
               precomputed text features (B, F) / (B, L, F) (all tokens valid).
        contact: (B, N, 3 + C) contact map, or None for a model built without contacts.
        drop_text / drop_contact: (B,) bool, True erases that condition for that sample.
        """
        if torch.is_tensor(texts):
            text_feat = (texts if texts.dim() == 3 else texts.unsqueeze(1)).to(self.device)
            text_pad = torch.zeros(text_feat.shape[:2], dtype=torch.bool, device=self.device)
        else:
            if self.text_encoder is None:
                raise ValueError("this model has no text encoder: pass text features, not captions")
            text_feat, text_pad = self.text_encoder.encode(list(texts), device=self.device)
        contact_feat = None
        if self.use_contacts:
            if contact is None:
                raise ValueError("this model conditions on contact maps (use_contacts=True) but got none")
            contact = contact.to(self.device)
            if isinstance(self.contact_encoder, SceneMapEncoder):
                contact_feat = self.contact_encoder(contact[..., :3], contact[..., 3:])
            else:
                contact_feat = self.contact_encoder(contact)
        return self.fuse_conditions(text_feat, text_pad, contact_feat, drop_text, drop_contact)

    def fuse_conditions(self, text_feat, text_pad, contact_feat=None, drop_text=None, drop_contact=None):
        """Raw features -> condition dict: erase, adapt to latent_dim, pool, join."""
        raw = {"_text_feat": text_feat, "_text_pad": text_pad, "_contact_feat": contact_feat}
        if drop_text is not None:
            text_feat = text_feat * (~drop_text.bool()).to(text_feat.dtype)[:, None, None]
        text_tok = self.language_adapter(text_feat)                                  # (B, L, D)
        valid = (~text_pad).to(text_tok.dtype).unsqueeze(-1)
        text_vec = (text_tok * valid).sum(1) / valid.sum(1).clamp(min=1.0)           # (B, D)
        contact_tok = None
        if contact_feat is not None:
            if drop_contact is not None:
                contact_feat = contact_feat * (~drop_contact.bool()).to(contact_feat.dtype)[:, None, None]
            contact_tok = self.contact_adapter(contact_feat)                          # (B, K, D)
        if self.arch == "trans_enc":
            tokens, pads = [text_tok], [text_pad]
            if contact_tok is not None:
                if hasattr(self, "contact_pooler"):
                    contact_tok = self.contact_pooler(contact_tok)                    # (B, latents, D)
                tokens.append(contact_tok)
                pads.append(torch.zeros(contact_tok.shape[:2], dtype=torch.bool, device=contact_tok.device))
            return {"text_vec": text_vec, "tokens": torch.cat(tokens, 1), "pad": torch.cat(pads, 1), **raw}

        # DiT: the pooled contact vector joins c in `forward` (c depends on t); the tokens are
        # what the blocks attend: the K contact tokens (dit_cross) or [text, pooled contact].
        out = {"text_vec": text_vec, **raw}
        tokens, pad = text_tok, text_pad
        if contact_tok is not None:
            out["contact_vec"], contact_ctx = self.cond_embedder.pool(contact_tok)   # (B, D), (B, L|K, D)
            contact_pad = torch.zeros(contact_ctx.shape[:2], dtype=torch.bool, device=contact_ctx.device)
            if self.arch == "dit_cross":
                tokens, pad = contact_tok, contact_pad
            else:
                tokens, pad = torch.cat([text_tok, contact_ctx], 1), torch.cat([text_pad, contact_pad], 1)
        out["tokens"], out["pad"] = tokens, pad
        return out

    def null_conditions(self, cond: dict) -> dict:
        """The unconditional twin of `cond` (both conditions erased) for classifier-free guidance."""
        B, dev = cond["_text_feat"].shape[0], cond["_text_feat"].device
        drop = torch.ones(B, dtype=torch.bool, device=dev)
        return self.fuse_conditions(cond["_text_feat"], cond["_text_pad"], cond["_contact_feat"],
                                    drop, drop if cond["_contact_feat"] is not None else None)

    # ----------------------------------------------------------------------------------------
    # denoiser
    # ----------------------------------------------------------------------------------------

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict, mask: torch.Tensor) -> torch.Tensor:
        """x_t (B, T, motion_dim), t (B,) long, cond from encode_conditions, mask (B, T) True = valid
        -> prediction (B, T, motion_dim): x0 (CMDM) or eps, as the diffusion is configured."""
        pad = ~mask.bool()
        x = self.motion_adapter(x_t)
        t_emb = self.timestep_embedder(t)
        if self.arch == "trans_enc":
            T = x.shape[1]
            seq = torch.cat([t_emb.unsqueeze(1), cond["tokens"], x], dim=1)
            key_pad = torch.cat([pad.new_zeros(pad.shape[0], 1), cond["pad"], pad], dim=1)
            h = self.self_attn_layer(self.positional_encoder(seq), src_key_padding_mask=key_pad)
            return self.motion_layer(h[:, -T:])

        c = self.cond_embedder(t_emb, cond["text_vec"], cond.get("contact_vec"))
        h = self.positional_encoder(x)
        if self.arch == "dit_cross" or self.fusion_method == "cross_attn":
            for block in self.dit_blocks:
                h = block(h, c, pad=pad, context=cond["tokens"], context_pad=cond["pad"])
        elif self.fusion_method == "concat":
            S = cond["tokens"].shape[1]
            h, hpad = torch.cat([cond["tokens"], h], 1), torch.cat([cond["pad"], pad], 1)
            for block in self.dit_blocks:
                h = block(h, c, pad=hpad)
            h = h[:, S:]
        else:                                           # adaln: the fork's dit
            for block in self.dit_blocks:
                h = block(h, c, pad=pad)
        return self.final_layer(h, c)

    # ----------------------------------------------------------------------------------------
    # reporting
    # ----------------------------------------------------------------------------------------

    def parameter_counts(self) -> dict:
        """Trainable parameters per top-level part, plus the frozen text encoder (not saved)."""
        counts = {}
        for name, p in self.named_parameters():
            part = name.split(".")[0] + ("" if p.requires_grad else " (frozen, fork compatibility)")
            counts[part] = counts.get(part, 0) + p.numel()
        if self.text_encoder is not None:
            counts["text_encoder (frozen, not in checkpoints)"] = self.text_encoder.num_parameters
        return counts


def build_model(cfg, load_text_encoder: bool = True) -> CMDM:
    """CMDM for a full `cmdm.config.Config` (model section + data.use_contacts, contact joints,
    diffusion.steps)."""
    return CMDM.from_config(cfg.model, use_contacts=cfg.data.use_contacts,
                            contact_channels=len(cfg.data.contact_joints),
                            num_timesteps=cfg.diffusion.steps, load_text_encoder=load_text_encoder,
                            contact_num_points=cfg.data.contact_num_points)

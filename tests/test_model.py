"""The CMDM denoiser, its condition encoders and its text encoder.

Most tests build tiny models (latent 32, 1-2 layers, T 16) fed with text features directly;
the tests of the text encoder itself load the real all-MiniLM-L6-v2 (offline, ~2 s) or tiny
randomly initialised BERT / CLIP models saved to tmp_path with tokenizers built offline.
"""

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdm.model import CMDM, ContactEncoder, TextEncoder, build_model
from cmdm.model.blocks import DiTBlock, DiTCrossBlock, DropPath, Dropout, LatentPooler
from cmdm.model.condition import farthest_point_sample

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT_DIM, B, T, N_POINTS = 16, 3, 16, 64
ARCHS = [("trans_enc", "cross_attn"), ("dit", "adaln"), ("dit", "cross_attn"), ("dit", "concat"), ("dit_cross", "adaln")]


def tiny(arch="dit", fusion="cross_attn", **kw):
    args = dict(arch=arch, fusion_method=fusion, latent_dim=32, num_layers=[1, 1], num_heads=4,
                dim_feedforward=64, text_dim=TEXT_DIM, contact_num_tokens=8, contact_dim=16,
                num_latents=4, num_timesteps=100, contact_group_size=8, contact_arch="compact")
    args.update(kw)
    torch.manual_seed(0)
    return CMDM(**args)


def inputs(seed=0, lengths=(16, 10, 5)):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(B, TEXT_DIM, generator=g)
    contact = torch.cat([torch.randn(B, N_POINTS, 3, generator=g), torch.rand(B, N_POINTS, 6, generator=g)], -1)
    x = torch.randn(B, T, 263, generator=g)
    t = torch.randint(0, 100, (B,), generator=g)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    return text, contact, x, t, mask


def open_dit_gates(model, scale=0.1):
    """Give adaLN-Zero layers non-zero weights so DiT blocks do something (they start as identity)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN_modulation" in name or "final_layer.linear" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


# --------------------------------------------------------------------------------------------
# denoiser
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,fusion", ARCHS)
def test_forward_shapes_and_condition_tokens(arch, fusion):
    model = tiny(arch, fusion)
    text, contact, x, t, mask = inputs()
    cond = model.encode_conditions(text, contact)
    # text (1 pooled token) + contact (8 tokens pooled to 4 latents); dit_cross: the 8 contact tokens.
    assert cond["tokens"].shape == (B, 8 if arch == "dit_cross" else 1 + 4, 32)
    assert cond["text_vec"].shape == (B, 32)
    out = model(x, t, cond, mask)
    assert out.shape == (B, T, 263) and torch.isfinite(out).all()


def test_trans_enc_matches_afford_motion_layout():
    """[time, text, contact(K), motion(T)] through a post-norm GELU nn.TransformerEncoder."""
    model = tiny("trans_enc", use_cross_attn_pooling=False)
    layer = model.self_attn_layer.layers[0]
    assert len(model.self_attn_layer.layers) == 2 and not layer.norm_first
    assert layer.activation is torch.nn.functional.gelu or "gelu" in str(layer.activation)
    text, contact, x, t, mask = inputs()
    cond = model.encode_conditions(text, contact)
    assert cond["tokens"].shape[1] == 1 + 8  # text + K contact tokens, no pooling
    seen = {}
    model.self_attn_layer.register_forward_pre_hook(lambda m, a, kw: seen.update(n=a[0].shape[1], pad=kw["src_key_padding_mask"]),
                                                    with_kwargs=True)
    model.eval()(x, t, cond, mask)
    assert seen["n"] == 1 + 1 + 8 + T
    assert torch.equal(seen["pad"][:, -T:], ~mask) and not seen["pad"][:, :10].any()


@pytest.mark.parametrize("arch,fusion", ARCHS)
def test_padded_frames_never_change_valid_frames(arch, fusion):
    model = tiny(arch, fusion).eval()
    open_dit_gates(model)
    text, contact, x, t, mask = inputs()
    cond = model.encode_conditions(text, contact)
    out = model(x, t, cond, mask)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), 263) * 100
    out2 = model(x2, t, cond, mask)
    assert torch.allclose(out[mask], out2[mask], atol=1e-5)
    assert not torch.allclose(out[~mask], out2[~mask])  # padded frames do see their own input


def test_dit_block_is_identity_at_init():
    torch.manual_seed(0)
    x, c, ctx = torch.randn(2, 7, 32), torch.randn(2, 32), torch.randn(2, 5, 32)
    block = DiTBlock(32, 4, 64, dropout=0.0, drop_path=0.0)
    assert torch.equal(block(x, c), x)
    # ... and it stops being the identity once the modulation has weights.
    torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    assert not torch.allclose(block(x, c), x)
    # The fork's cross block gates its attention branches only: at init it is x + MLP(norm(x)).
    block = DiTCrossBlock(32, 4, 64, dropout=0.0, drop_path=0.0)
    assert torch.allclose(block(x, c, context=ctx), x + block.mlp(block.norm3(x)), atol=1e-6)


def test_untrained_dit_predicts_zero():
    model = tiny("dit")
    text, contact, x, t, mask = inputs()
    out = model(x, t, model.encode_conditions(text, contact), mask)
    assert torch.equal(out, torch.zeros_like(out))


def test_drop_path_is_off_in_eval_and_on_in_train():
    dp = DropPath(0.5)
    x = torch.randn(64, 3, 4)
    assert dp.eval()(x) is x
    y = dp.train()(x)
    dropped = (y == 0).flatten(1).all(1)
    assert 10 < dropped.sum() < 54  # whole samples dropped
    assert torch.allclose(y[~dropped], x[~dropped] * 2)  # survivors rescaled by 1/(1-p)

    model = tiny("dit", dropout=0.0, dit_drop_path=0.5)
    assert [b.drop_path.p for b in model.dit_blocks] == [0.0, 0.5]  # linear in depth
    open_dit_gates(model)
    text, contact, x, t, mask = inputs()
    cond = model.encode_conditions(text, contact)
    model.eval()
    assert torch.equal(model(x, t, cond, mask), model(x, t, cond, mask))
    model.train()
    torch.manual_seed(3)
    outs = [model(x, t, cond, mask) for _ in range(6)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_fast_dropout_matches_nn_dropout_statistics():
    d = Dropout(0.25).train()
    x = torch.ones(200_000)
    y = d(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert d.eval()(x) is x


def test_condition_dropout_erases_to_a_learned_constant():
    model = tiny("trans_enc").eval()
    text, contact, *_ = inputs()
    other_text, other_contact, *_ = inputs(seed=5)
    drop = torch.tensor([True, False, True])
    a = model.encode_conditions(text, contact, drop_text=drop, drop_contact=drop)
    b = model.encode_conditions(other_text, other_contact, drop_text=drop, drop_contact=drop)
    assert torch.allclose(a["tokens"][drop], b["tokens"][drop])       # erased: input no longer matters
    assert not torch.allclose(a["tokens"][~drop], b["tokens"][~drop])
    assert torch.allclose(a["text_vec"][0], model.language_adapter.bias)  # afford-motion: feature * 0
    null = model.null_conditions(a)
    assert torch.allclose(null["tokens"], a["tokens"][[0]].expand_as(null["tokens"]))


def test_sample_drop_masks_rates():
    model = tiny("dit", text_drop_prob=0.1, contact_drop_prob=0.3)
    g = torch.Generator().manual_seed(0)
    drop_text, drop_contact = model.sample_drop_masks(20_000, generator=g)
    assert abs(drop_text.float().mean() - 0.1) < 0.01 and abs(drop_contact.float().mean() - 0.3) < 0.015
    assert abs((drop_text & drop_contact).float().mean() - 0.03) < 0.006  # independent


def test_model_without_contacts():
    model = tiny("dit", use_contacts=False)
    assert not hasattr(model, "contact_encoder")
    text, _, x, t, mask = inputs()
    cond = model.encode_conditions(text, None)
    assert model(x, t, cond, mask).shape == (B, T, 263)
    with pytest.raises(ValueError, match="contact"):
        tiny("dit").encode_conditions(text, None)


def test_encode_batch_moves_and_drops():
    model = tiny("dit", text_drop_prob=1.0 - 1e-9, contact_drop_prob=0.0).eval()
    text, contact, x, t, mask = inputs()
    batch = {"text": text, "contact": contact, "motion": x, "mask": mask}
    cond = model.encode_batch(batch, cfg_dropout=True)
    ref = model.encode_conditions(text, contact, drop_text=torch.ones(B, dtype=torch.bool))
    assert torch.allclose(cond["text_vec"], ref["text_vec"])


# --------------------------------------------------------------------------------------------
# contact encoder and pooling
# --------------------------------------------------------------------------------------------

def test_farthest_point_sampling_matches_reference():
    g = torch.Generator().manual_seed(0)
    xyz = torch.randn(2, 200, 3, generator=g)
    idx, dists = farthest_point_sample(xyz, 12)
    for b in range(2):
        p = xyz[b].numpy().astype(np.float64)
        chosen, nearest = [0], np.full(len(p), np.inf)
        for _ in range(11):
            nearest = np.minimum(nearest, ((p - p[chosen[-1]]) ** 2).sum(1))
            chosen.append(int(nearest.argmax()))
        assert idx[b].tolist() == chosen
        ref = ((xyz[b][idx[b]][:, None] - xyz[b][None]) ** 2).sum(-1)
        assert torch.allclose(dists[b], ref, atol=1e-5)


def test_contact_encoder_tokens_and_contact_sensitivity():
    enc = ContactEncoder(in_dim=9, num_tokens=8, out_dim=16, group_size=8)
    _, contact, *_ = inputs()
    tokens = enc(contact)
    assert tokens.shape == (B, 8, 16)
    changed = contact.clone()
    changed[..., 3:] = 1.0 - changed[..., 3:]  # same scene, different contacts
    assert not torch.allclose(enc(changed), tokens)
    tokens.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    with pytest.raises(ValueError, match="channels"):
        enc(contact[..., :6])
    with pytest.raises(ValueError, match="contact points"):
        enc(contact[:, :4])


def test_latent_pooler_ignores_padding_and_fixes_length():
    torch.manual_seed(0)
    pool = LatentPooler(32, num_latents=5, num_heads=4, ff_dim=64).eval()
    tokens = torch.randn(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[:, 6:] = True
    out = pool(tokens, pad)
    assert out.shape == (2, 5, 32)
    tokens2 = tokens.clone()
    tokens2[:, 6:] += 50.0
    assert torch.allclose(pool(tokens2, pad), out, atol=1e-6)
    assert torch.allclose(pool(tokens[:, :6]), out, atol=1e-5)


# --------------------------------------------------------------------------------------------
# text encoder
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("all-minilm-l6-v2", max_length=20, output="pooled")


def test_minilm_text_encoder_is_the_real_sentence_model(minilm):
    caps = ["a person walks forward", "someone walks ahead slowly", "a man does a cartwheel"]
    feats, pad = minilm.encode(caps)
    assert feats.shape == (3, 1, 384) and not pad.any()
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3, 1), atol=1e-5)  # mean pooling + L2 norm
    sim = feats[:, 0] @ feats[:, 0].T
    assert sim[0, 1] > 0.5 > sim[0, 2]  # paraphrases close, different actions far apart
    assert not any(p.requires_grad for p in minilm.model.parameters()) and not minilm.model.training


def test_text_cache_and_batch_independence(minilm):
    minilm.clear_cache()
    before = minilm.num_encoded
    a, _ = minilm.encode(["a person jumps", "a person sits down", "a person jumps"])
    assert minilm.num_encoded - before == 2  # duplicates encoded once
    b, _ = minilm.encode(["a person sits down", "a person jumps"])
    assert minilm.num_encoded - before == 2  # all from the cache
    assert torch.equal(b[0], a[1]) and torch.equal(b[1], a[0])
    minilm.clear_cache()
    c, _ = minilm.encode(["a person jumps"])  # alone, no padding partner
    assert torch.allclose(c[0], a[0], atol=1e-5)


def test_text_features_saved_to_disk_load_into_a_fresh_encoder(minilm, tmp_path):
    caps = ["a person jumps", "a person sits down on a chair", "someone waves"]
    minilm.clear_cache()
    ref, _ = minilm.encode(caps)
    path = tmp_path / minilm.cache_name()
    minilm.save_cache(path)
    fresh = TextEncoder("all-minilm-l6-v2", max_length=20, output="pooled")
    assert fresh.load_cache(path) == 3
    got, _ = fresh.encode(caps)
    assert fresh.num_encoded == 0 and torch.equal(got, ref)      # every caption came from the file
    assert not fresh.loaded                                      # ...so the transformer was never loaded
    assert path.name == "all-minilm-l6-v2-len20-pooled.pt"
    new, _ = fresh.encode(["a person sits down on a chair", "a person kicks a ball"])  # one miss: loads it
    assert fresh.loaded and fresh.num_encoded == 1
    assert torch.equal(new[0], ref[1]) and torch.allclose(new[1], minilm.encode(["a person kicks a ball"])[0][0])


@pytest.fixture(scope="module")
def minilm_tokens():
    return TextEncoder("all-minilm-l6-v2", max_length=5, output="tokens")


def test_text_tokens_mode_respects_max_length(minilm_tokens):
    feats, pad = minilm_tokens.encode(["walk", "a person walks forward then turns around and sits on a chair"])
    assert feats.shape == (2, 5 + 2, 384)  # [CLS] + 5 + [SEP]
    assert pad[0].tolist() == [False] * 3 + [True] * 4 and not pad[1].any()


def test_text_encoder_stays_out_of_state_dict_and_copies(minilm):
    model = CMDM(arch="dit", latent_dim=32, num_layers=1, num_heads=4, dim_feedforward=64,
                 text_encoder=minilm, use_contacts=False, num_latents=4)
    assert model.text_dim == 384
    assert not any(k.startswith("text") for k in model.state_dict())
    assert not any(p is q for p in model.parameters() for q in minilm.model.parameters())
    assert copy.deepcopy(model).text_encoder is minilm  # EMA copies share the frozen encoder
    cond = model.encode_conditions(["a person waves"], None)
    assert cond["text_vec"].shape == (1, 32)


@pytest.mark.parametrize("arch,fusion", ARCHS)
def test_per_token_text_conditions_carry_the_padding_mask(arch, fusion, minilm_tokens):
    enc = minilm_tokens
    model = CMDM(arch=arch, fusion_method=fusion, latent_dim=32, num_layers=1, num_heads=4, dim_feedforward=64,
                 text_encoder=enc, contact_num_tokens=8, contact_dim=16, contact_group_size=8, contact_arch="compact",
                 num_latents=4, dit_use_cross_attn_pooling=False).eval()
    _, contact, x, t, mask = inputs()
    cond = model.encode_conditions(["walk", "a person walks in a circle", "jump"], contact)
    text_pad = enc.encode(["walk", "a person walks in a circle", "jump"])[1]
    if arch != "dit_cross":  # dit_cross attends the contact tokens only
        assert text_pad.any() and torch.equal(cond["pad"][:, : text_pad.shape[1]], text_pad)
    assert not cond["pad"][:, text_pad.shape[1]:].any()  # contact latents are all valid
    # text_vec is the mean over valid tokens only
    tok = model.language_adapter(enc.encode(["walk"])[0])[0]
    assert torch.allclose(cond["text_vec"][0], tok.mean(0), atol=1e-5)
    assert model(x, t, cond, mask).shape == (B, T, 263)


def test_tiny_bert_from_a_local_folder(tmp_path, minilm):
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=minilm.tokenizer.vocab_size, hidden_size=24, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=48)
    BertModel(cfg).save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)  # MiniLM's tokenizer is BERT's uncased WordPiece
    enc = TextEncoder(str(tmp_path), max_length=4, output="tokens")
    assert enc.kind == "bert" and enc.dim == 24 and enc.pooling == ("mean", False)
    feats, pad = enc.encode(["hi", "a person walks in a circle"])
    assert feats.shape == (2, 6, 24) and pad.sum(1).tolist() == [3, 0]
    pooled = TextEncoder(str(tmp_path), max_length=4, output="pooled")
    p, _ = pooled.encode(["a person walks in a circle"])
    assert torch.allclose(p[0, 0], feats[1].mean(0), atol=1e-5)  # mean over valid tokens


def _tiny_clip(path, with_projection=True):
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # A byte-level BPE with no merges: every character is a token. Enough to exercise the path.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
            vocab[ch + suffix] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=40, projection_dim=24,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg).save_pretrained(path)


def test_tiny_clip_from_a_local_folder(tmp_path):
    _tiny_clip(tmp_path)
    pooled = TextEncoder(str(tmp_path), max_length=6, output="pooled")
    assert pooled.kind == "clip" and pooled.use_projection and pooled.dim == 24  # CLIP's encode_text
    p, pad = pooled.encode(["walk", "a person walks"])
    assert p.shape == (2, 1, 24) and not pad.any()
    tokens = TextEncoder(str(tmp_path), max_length=6, output="tokens")
    f, pad = tokens.encode(["walk", "a person walks"])
    assert f.shape == (2, 8, 32)  # sos + 6 + eos (characters here, truncated)
    assert pad.sum(1).tolist() == [2, 0]  # "walk" = sos + 4 chars + eos


def test_full_clip_snapshot_gives_clips_encode_text(tmp_path):
    """A whole CLIPModel folder (what openai/clip-vit-base-patch32 is): the pooled feature is
    CLIP's projected text embedding, as afford-motion's `clip_model.encode_text`."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    _tiny_clip(tmp_path)  # writes the tokenizer (and a text model that the CLIPModel replaces)
    text_cfg = dict(vocab_size=len(CLIPTokenizer.from_pretrained(tmp_path)), hidden_size=32, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=40,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision_cfg = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=8, patch_size=4)
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=24)).eval()
    clip.save_pretrained(tmp_path)
    enc = TextEncoder(str(tmp_path), max_length=6, output="pooled")
    feats, _ = enc.encode(["walk", "a person walks"])
    tok = enc.tokenizer(["walk", "a person walks"], padding=True, truncation=True, max_length=8, return_tensors="pt")
    with torch.no_grad():
        ref = clip.get_text_features(**tok)
    ref = getattr(ref, "pooler_output", ref)  # a tensor, or an output object in newer transformers
    assert enc.use_projection and torch.allclose(feats[:, 0], ref, atol=1e-5)


def test_clip_without_projection_uses_pooled_eos(tmp_path):
    _tiny_clip(tmp_path, with_projection=False)
    enc = TextEncoder(str(tmp_path), max_length=6, output="pooled")
    assert not enc.use_projection and enc.dim == 32


def test_unknown_text_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="text model"):
        TextEncoder(str(tmp_path / "missing-model"))


# --------------------------------------------------------------------------------------------
# from the typed config
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["configs/demo.yaml", "configs/stable.yaml"])
def test_build_model_from_configs(path, minilm, monkeypatch):
    from cmdm.config import load_config
    import cmdm.model.cmdm as cmdm_module

    monkeypatch.setattr(cmdm_module, "TextEncoder", lambda *a, **k: minilm)  # reuse the loaded one
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", path))
    model = build_model(cfg).eval()
    m, ce = cfg.model, cfg.model.condition_embedder
    assert model.arch == m.arch and len(model.dit_blocks) == sum(m.num_layers)
    assert model.contact_encoder.num_tokens == ce.contact_num_tokens
    assert model.cond_embedder.contact_query.shape == (1, ce.num_latents, m.latent_dim)
    assert hasattr(model.dit_blocks[0], "cross_attn") == (ce.fusion_method == "cross_attn")
    assert model.dit_blocks[-1].drop_path.p == pytest.approx(m.dit_drop_path)
    assert model.timestep_embedder.pe.shape[0] == cfg.diffusion.steps
    n = 256
    contact = torch.rand(2, n, 3 + len(cfg.data.contact_joints))
    cond = model.encode_conditions(["a person walks", "a person sits"], contact)
    x, mask = torch.randn(2, 12, 263), torch.ones(2, 12, dtype=torch.bool)
    assert model(x, torch.tensor([0, 999]), cond, mask).shape == (2, 12, 263)


def test_config_arch_and_fusion_switches():
    from cmdm.config import load_config

    cfg = load_config(None, ["model.arch=trans_enc", "model.latent_dim=32", "model.num_heads=4",
                             "model.num_layers=[1]", "model.dim_feedforward=64", "data.use_contacts=false"])
    model = build_model(cfg, load_text_encoder=False)
    assert model.arch == "trans_enc" and model.text_dim == 384 and not model.use_contacts
    cfg = load_config(None, ["model.condition_embedder.fusion_method=concat", "model.dit_use_cross_attn_pooling=false",
                             "model.latent_dim=32", "model.num_heads=4", "model.num_layers=[1]"])
    model = build_model(cfg, load_text_encoder=False)
    assert isinstance(model.dit_blocks[0], DiTBlock) and not hasattr(model.cond_embedder, "contact_query")
    cfg = load_config(None, ["model.arch=dit_cross", "model.latent_dim=32", "model.num_heads=4", "model.num_layers=[1]"])
    model = build_model(cfg, load_text_encoder=False)
    assert isinstance(model.dit_blocks[0], DiTCrossBlock) and not hasattr(model.cond_embedder, "contact_query")


# afford-motion's CLIP text features (models/functions.py encode_text_clip): OpenAI's clip.tokenize(texts,
# context_length=max_length + 2, truncate=True), zeros to 77, encode_text = the end-of-text token's state after
# ln_final times text_projection. A tiny random CLIP with OpenAI's vocabulary layout (256 byte tokens, the same
# with "</w>", merges, then start- and end-of-text: end-of-text is the largest id, which encode_text's argmax
# relies on) and a few merges, so whole words are single tokens.
MERGES = [("w", "a"), ("wa", "l"), ("wal", "k</w>"), ("a", "l"), ("al", "k"), ("alk", "s</w>"), ("wal", "k"),
          ("walk", "s</w>"), ("j", "u"), ("ju", "m"), ("jum", "p</w>")]


def _openai_layout_clip(path):
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["".join(m) for m in MERGES])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    CLIPTokenizer(vocab=vocab, merges=list(MERGES)).save_pretrained(path)
    cfg = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=24,
                         hidden_act="quick_gelu", bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(cfg).eval()
    with torch.no_grad():  # layer norms and biases away from their 1/0 init, so a wrong pooling shows
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(path)
    return vocab, model


def _expected_ids(vocab, caption, max_length):
    """OpenAI's clip.tokenize(truncate=True) by hand for words that are one token or only letters, zeros to 77."""
    ids = []
    for word in caption.lower().split():
        ids += [vocab[word + "</w>"]] if word + "</w>" in vocab else \
            [vocab[c] for c in word[:-1]] + [vocab[word[-1] + "</w>"]]
    row = [vocab["<|startoftext|>"]] + ids[:max_length] + [vocab["<|endoftext|>"]]
    return row + [0] * (77 - len(row))


def test_clip_features_are_afford_motions_encode_text(tmp_path):
    vocab, model = _openai_layout_clip(tmp_path)
    captions = ["walk", "a person walks", "  A   Person\tWALKS ", "jump jump walk walks zz", "walks"]
    enc = TextEncoder(str(tmp_path), max_length=4, output="pooled")     # 4 + 2 = 6 tokens, cut as OpenAI
    assert enc.kind == "clip" and enc.use_projection and enc.dim == 24 and not enc.loaded  # width from config
    feats, pad = enc.encode(captions)
    assert feats.shape == (5, 1, 24) and not pad.any()

    ids = torch.tensor([_expected_ids(vocab, c, 4) for c in captions])
    assert ids[3].tolist()[:6] == [vocab[t] for t in ["<|startoftext|>", "jump</w>", "jump</w>", "walk</w>",
                                                      "walks</w>", "<|endoftext|>"]]  # truncated, eot forced
    with torch.no_grad():   # encode_text by hand: last layer's states, ln_final, state at argmax(ids), projection
        states = model.text_model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        ln = model.text_model.final_layer_norm
        x = torch.nn.functional.layer_norm(states, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        ref = x[torch.arange(5), ids.argmax(-1)] @ model.text_projection.weight.T
    assert torch.allclose(feats[:, 0], ref, atol=1e-5)
    assert torch.equal(feats[1], feats[2])                      # lower case, whitespace cleaned as OpenAI's
    assert not torch.allclose(feats[0], feats[4], atol=1e-3)    # and different captions differ


def test_clip_end_of_text_state_does_not_see_the_padding(tmp_path):
    """CLIP's attention is causal: zeros after end-of-text (afford-motion pads to 77, we to the longest caption)
    change nothing before it."""
    vocab, model = _openai_layout_clip(tmp_path)
    row = _expected_ids(vocab, "a person walks", 20)
    eot = row.index(vocab["<|endoftext|>"])
    with torch.no_grad():
        short = model(input_ids=torch.tensor([row[: eot + 1]])).text_embeds
        long = model(input_ids=torch.tensor([row])).text_embeds
        other = model(input_ids=torch.tensor([row[: eot + 1] + [7] * (76 - eot)])).text_embeds
    assert torch.allclose(short, long, atol=1e-5) and torch.allclose(short, other, atol=1e-5)


def test_clip_weights_load_only_on_a_cache_miss(tmp_path):
    _openai_layout_clip(tmp_path / "clip")
    enc = TextEncoder(str(tmp_path / "clip"), max_length=20)
    ref, _ = enc.encode(["a person walks"])
    enc.save_cache(tmp_path / "cache.pt")
    fresh = TextEncoder(str(tmp_path / "clip"), max_length=20)
    fresh.load_cache(tmp_path / "cache.pt")
    assert torch.equal(fresh.encode(["a person walks"])[0], ref) and not fresh.loaded


def test_text_cache_name_covers_the_whole_model_path(tmp_path):
    from cmdm.model.text import cache_file_name

    (tmp_path / "v1" / "bert").mkdir(parents=True)
    (tmp_path / "v2" / "bert").mkdir(parents=True)
    a, b = (cache_file_name(str(tmp_path / v / "bert"), 20, "pooled") for v in ("v1", "v2"))
    assert a != b and a.startswith("bert-") and a.endswith("-len20-pooled.pt")
    assert cache_file_name(str(tmp_path / "v1" / ".." / "v1" / "bert"), 20, "pooled") == a  # the same folder
    assert cache_file_name("ViT-B/32", 20, "pooled") == cache_file_name("openai/clip-vit-base-patch32", 20, "pooled")
    assert cache_file_name("all-minilm-l6-v2", 20, "pooled") == "all-minilm-l6-v2-len20-pooled.pt"


def test_check_text_model_asks_for_weights_only_when_a_caption_needs_them(tmp_path):
    from cmdm.model.text import TextModelError, check_text_model

    _openai_layout_clip(tmp_path / "clip")
    check_text_model(str(tmp_path / "clip"), 20, "pooled")                  # everything there: fine
    (tmp_path / "clip" / "model.safetensors").unlink()                      # config and tokenizer, no weights
    (tmp_path / "cache.pt").write_bytes(b"")
    check_text_model(str(tmp_path / "clip"), 20, "pooled", tmp_path / "cache.pt")   # all captions cached
    with pytest.raises(TextModelError, match="model.text_model.name"):
        check_text_model(str(tmp_path / "clip"), 20, "pooled", tmp_path / "no-cache.pt")
    with pytest.raises(TextModelError, match="model.text_model.name"):
        check_text_model(str(tmp_path / "clip"), 20, "tokens", tmp_path / "cache.pt")  # tokens are never cached


def test_the_stable_model_builds_without_its_text_encoders_files():
    """bench/bench_model.py builds configs/stable.yaml with precomputed text features: CLIP ViT-B/32's width (512,
    its projection) is known without its files, which a CPU machine without the hub does not hold."""
    from cmdm.config import load_config
    root = Path(__file__).resolve().parents[1]
    model = build_model(load_config(root / "configs" / "stable.yaml"), load_text_encoder=False)
    assert model.text_dim == 512 and model.text_encoder is None
    with pytest.raises(ValueError, match="known width"):
        build_model(load_config(None, ["model.text_model.name=some/other-model"]), load_text_encoder=False)

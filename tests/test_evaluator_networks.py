"""The evaluator networks load an official-layout finest.tar strictly; tokens and GloVe pickles are read safely."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cmdm.evaluation.evaluator import load_official_evaluator
from cmdm.evaluation.networks import CheckpointError, EvaluatorSizes, build_encoders
from cmdm.evaluation.word_vectorizer import (
    POS_CLASSES, VocabularyError, WordVocabulary, load_glove, load_plain_pickle, pad_tokens,
)

META = Path(__file__).parent / "data" / "t2m_evaluator_meta"


def gru_shapes(prefix, inp, hid):
    out = {}
    for sfx in ("", "_reverse"):
        out.update({f"{prefix}weight_ih_l0{sfx}": (3 * hid, inp), f"{prefix}weight_hh_l0{sfx}": (3 * hid, hid),
                    f"{prefix}bias_ih_l0{sfx}": (3 * hid,), f"{prefix}bias_hh_l0{sfx}": (3 * hid,)})
    return out


# The official t2m evaluator, written out from the reference architecture (not read from our modules).
OFFICIAL_SHAPES = {
    "movement_encoder": {"main.0.weight": (512, 259, 4), "main.0.bias": (512,), "main.3.weight": (512, 512, 4),
                         "main.3.bias": (512,), "out_net.weight": (512, 512), "out_net.bias": (512,)},
    "motion_encoder": {"hidden": (2, 1, 1024), "input_emb.weight": (1024, 512), "input_emb.bias": (1024,),
                       **gru_shapes("gru.", 1024, 1024),
                       "output_net.0.weight": (1024, 2048), "output_net.0.bias": (1024,),
                       "output_net.1.weight": (1024,), "output_net.1.bias": (1024,),
                       "output_net.3.weight": (512, 1024), "output_net.3.bias": (512,)},
    "text_encoder": {"hidden": (2, 1, 512), "pos_emb.weight": (300, 15), "pos_emb.bias": (300,),
                     "input_emb.weight": (512, 300), "input_emb.bias": (512,), **gru_shapes("gru.", 512, 512),
                     "output_net.0.weight": (512, 1024), "output_net.0.bias": (512,),
                     "output_net.1.weight": (512,), "output_net.1.bias": (512,),
                     "output_net.3.weight": (512, 512), "output_net.3.bias": (512,)},
}
WORDS = ["unk", "sos", "eos", "a", "person", "walk", "left", "slowly", "chair"]


def adam_state(n_params: int) -> dict:
    """A real Adam state dict after one step, with the structure finest.tar carries (small tensors keep it fast)."""
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(n_params)]
    opt = torch.optim.Adam(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """finest.tar in the official layout (+ optimiser states, epoch, iter), a tiny GloVe folder, the real meta."""
    root = tmp_path_factory.mktemp("t2m")
    g = torch.Generator().manual_seed(0)
    ckpt = {name: {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}
            for name, shapes in OFFICIAL_SHAPES.items()}
    ckpt["opt_text_encoder"] = adam_state(len(OFFICIAL_SHAPES["text_encoder"]))
    ckpt["opt_motion_encoder"] = adam_state(len(OFFICIAL_SHAPES["motion_encoder"]))
    ckpt.update(epoch=57, iter=120000)
    ckpt_dir = root / "t2m" / "text_mot_match" / "model"
    ckpt_dir.mkdir(parents=True)
    torch.save(ckpt, ckpt_dir / "finest.tar")
    (root / "meta").mkdir()
    for name in ("mean.npy", "std.npy"):
        (root / "meta" / name).write_bytes((META / name).read_bytes())
    glove = root / "glove"
    glove.mkdir()
    np.save(glove / "our_vab_data.npy", np.random.default_rng(0).standard_normal((len(WORDS), 300)).astype(np.float32))
    with open(glove / "our_vab_words.pkl", "wb") as f:
        pickle.dump(WORDS, f)
    with open(glove / "our_vab_idx.pkl", "wb") as f:
        pickle.dump({w: i for i, w in enumerate(WORDS)}, f)
    return root, ckpt


@pytest.fixture(scope="module")
def official_ev(official):
    root, _ = official
    return load_official_evaluator(root, root / "glove")


# ---------------------------------------------------------------- networks and checkpoints

def test_our_modules_have_the_official_names_and_shapes():
    for name, module in build_encoders(EvaluatorSizes()).items():
        assert {k: tuple(v.shape) for k, v in module.state_dict().items()} == OFFICIAL_SHAPES[name]


def test_official_checkpoint_loads_strictly_with_extra_entries(official, official_ev):
    root, ckpt = official
    ev = official_ev
    assert ev.info == {"epoch": 57, "iter": 120000}
    for name in OFFICIAL_SHAPES:
        for k, v in getattr(ev, name).state_dict().items():
            assert torch.equal(v, ckpt[name][k]), (name, k)
    np.testing.assert_allclose(ev.mean.numpy(), np.load(META / "mean.npy"), rtol=1e-6)
    assert ev.dim == 512


def test_legacy_serialisation_also_loads(official, tmp_path):
    _, ckpt = official
    torch.save(ckpt, tmp_path / "finest.tar", _use_new_zipfile_serialization=False)
    ev = load_official_evaluator(tmp_path, official[0] / "glove", meta_dir=META)
    assert torch.equal(ev.text_encoder.hidden, ckpt["text_encoder"]["hidden"])


@pytest.mark.parametrize("break_it, words", [
    (lambda c: c["motion_encoder"].__setitem__("gru.weight_ih_l0_rev", c["motion_encoder"].pop("gru.weight_ih_l0_reverse")),
     ["motion_encoder", "'gru.weight_ih_l0_reverse'", "missing", "'gru.weight_ih_l0_rev'", "unexpected"]),
    (lambda c: c["text_encoder"].__setitem__("pos_emb.weight", torch.zeros(300, 16)),
     ["text_encoder.pos_emb.weight", "(300, 16)", "(300, 15)"]),
    (lambda c: c.pop("movement_encoder"), ["'movement_encoder'"]),
])
def test_wrong_key_or_shape_names_file_and_key(official, tmp_path, break_it, words):
    root, ckpt = official
    bad = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ckpt.items()}
    break_it(bad)
    torch.save(bad, tmp_path / "finest.tar")
    with pytest.raises(CheckpointError) as err:
        load_official_evaluator(tmp_path, root / "glove", meta_dir=META)
    msg = str(err.value)
    assert str(tmp_path / "finest.tar") in msg
    for w in words:
        assert w in msg


def test_missing_files_say_what_and_where(official, tmp_path):
    root, _ = official
    with pytest.raises(CheckpointError, match="finest.tar.*text-to-motion"):
        load_official_evaluator(tmp_path, root / "glove")
    with pytest.raises(VocabularyError, match="our_vab_words.pkl.*text-to-motion"):
        (tmp_path / "glove").mkdir()
        np.save(tmp_path / "glove" / "our_vab_data.npy", np.zeros((2, 300)))
        load_glove(tmp_path / "glove")


def test_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"movement_encoder": Evil()}, tmp_path / "finest.tar")
    with pytest.raises(CheckpointError, match="weights only"):
        load_official_evaluator(tmp_path, tmp_path, meta_dir=META)
    assert not marker.exists()


# ---------------------------------------------------------------- embeddings

def test_embeddings_shapes_order_and_padding(official_ev):
    ev = official_ev
    rng = np.random.default_rng(0)
    mean, std = np.load(META / "mean.npy"), np.load(META / "std.npy")
    raw = (mean + std * rng.standard_normal((3, 196, 263))).astype(np.float32)
    lengths = np.array([196, 40, 120])
    emb = ev.embed_motion(raw, lengths)
    assert emb.shape == (3, 512) and emb.dtype == np.float32
    # Each clip alone, unpadded, gives the same embedding: padding and batch order are invisible.
    for i, n in enumerate(lengths):
        alone = ev.embed_motion(torch.from_numpy(raw[i:i + 1, :n]), torch.tensor([n]))
        np.testing.assert_allclose(alone[0], emb[i], atol=1e-4)
    tokens = [["a/DET", "person/NOUN", "walk/VERB", "left/ADV"], ["a/DET", "chair/NOUN"] * 15, []]
    t = ev.embed_text(tokens, ["a person walks left", "...", ""])
    assert t.shape == (3, 512)
    np.testing.assert_allclose(ev.embed_text(tokens[::-1])[::-1], t, atol=1e-5)
    with pytest.raises(ValueError, match="lengths"):
        ev.embed_motion(raw, np.array([196, 2, 120]))


# ---------------------------------------------------------------- tokens and vocabulary

def test_pad_tokens_follows_the_reference_rules():
    toks, n = pad_tokens(["a/DET", "man/NOUN"])
    assert toks[:4] == ["sos/OTHER", "a/DET", "man/NOUN", "eos/OTHER"] and n == 4
    assert len(toks) == 22 and toks[4:] == ["unk/OTHER"] * 18
    for length, expected in ((19, 21), (20, 22), (25, 22)):
        toks, n = pad_tokens([f"w{i}/NOUN" for i in range(length)])
        assert len(toks) == 22 and n == expected and toks[n - 1] == "eos/OTHER"
        assert toks[1:n - 1] == [f"w{i}/NOUN" for i in range(min(length, 20))]


def test_vip_unknown_and_pos_rules(official):
    vocab, vectors = load_glove(official[0] / "glove")
    assert vectors.shape == (len(WORDS), 300) and len(vocab) == len(WORDS)
    P = {p: i for i, p in enumerate(POS_CLASSES)}
    assert vocab.lookup("walk/VERB") == (WORDS.index("walk"), P["Act_VIP"])
    assert vocab.lookup("left/ADJ") == (WORDS.index("left"), P["Loc_VIP"])
    assert vocab.lookup("chair/NOUN") == (WORDS.index("chair"), P["Obj_VIP"])
    assert vocab.lookup("slowly/ADV") == (WORDS.index("slowly"), P["Desc_VIP"])
    assert vocab.lookup("person/NOUN") == (WORDS.index("person"), P["NOUN"])
    assert vocab.lookup("person/PROPN") == (WORDS.index("person"), P["OTHER"])   # tag outside the 15 classes
    assert vocab.lookup("zebra/NOUN") == (WORDS.index("unk"), P["OTHER"])        # unknown word
    assert vocab.lookup("run/VERB") == (WORDS.index("unk"), P["OTHER"])          # VIP word, but not in the vocabulary
    rows, pos, lens = vocab.encode([["a/DET", "person/NOUN", "walk/VERB"]])
    assert rows.shape == (1, 22) and pos.shape == (1, 22, 15) and lens.tolist() == [5]
    assert rows[0, :5].tolist() == [1, 3, 4, 5, 2] and (rows[0, 5:] == 0).all()
    assert pos[0].sum(1).eq(1).all() and pos[0, 0, P["OTHER"]] == 1


def test_learned_vocabulary_from_captions():
    vocab = WordVocabulary.from_captions([["a/DET", "man/NOUN"], ["man/NOUN", "jump/VERB", "unk/X"]])
    assert vocab.words() == ["unk", "sos", "eos", "a", "jump", "man"]


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "our_vab_words.pkl"
    with open(path, "wb") as f:
        pickle.dump(["unk", Evil()], f)
    with pytest.raises(VocabularyError, match=r"our_vab_words.pkl was refused.*(posix|os)\.system"):
        load_plain_pickle(path)
    assert not marker.exists()
    # A plain list, dict, str and int pass, in the old protocols too.
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        with open(path, "wb") as f:
            pickle.dump({"walk": 3, "run": [1, "x"]}, f, protocol=protocol)
        assert load_plain_pickle(path) == {"walk": 3, "run": [1, "x"]}


def test_load_evaluator_from_a_humanml3d_config(official):
    from cmdm.config import Config
    from cmdm.evaluation.evaluator import load_evaluator
    root, _ = official
    cfg = Config()
    cfg.evaluation.evaluator_dir, cfg.evaluation.glove_dir = str(root), str(root / "glove")
    assert cfg.data.name == "humanml3d"
    ev = load_evaluator(cfg)
    assert ev.source.endswith("t2m/text_mot_match/model/finest.tar") and ev.dim == 512

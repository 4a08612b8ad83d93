"""Caption tokens -> word indices + POS one-hots, as the text-to-motion evaluator reads them.

HumanML3D captions come tokenised as `word/POS` (spaCy lemma and UPOS tag). The evaluator sees:

    sos/OTHER, the first 20 tokens, eos/OTHER, then unk/OTHER up to 22 slots; sentence length = tokens + 2
    POS one-hot over 15 classes; a known word of a VIP list (Loc/Body/Obj/Act/Desc) gets that class
    instead of its tag; a tag outside the list is OTHER; a word outside the vocabulary is `unk` + OTHER.

The official evaluator looks words up in the user's GloVe folder (`our_vab_data.npy` (4199, 300),
`our_vab_words.pkl`, `our_vab_idx.pkl`). The pickles are third-party files, so they are read with an
unpickler that can only build lists, dicts, strings and ints: a pickle that asks for anything else
(os.system, eval, numpy...) is refused before it runs. A fitted evaluator uses the same rules with a
vocabulary built from its training captions and a learned vector table.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

POS_CLASSES = ("VERB", "NOUN", "DET", "ADP", "NUM", "AUX", "PRON", "ADJ", "ADV",
               "Loc_VIP", "Body_VIP", "Obj_VIP", "Act_VIP", "Desc_VIP", "OTHER")
POS_INDEX = {p: i for i, p in enumerate(POS_CLASSES)}

# Words whose role matters for motion get their own POS class (the reference's lists; first list wins).
VIP_WORDS = {
    "Loc_VIP": "left right clockwise counterclockwise anticlockwise forward back backward up down straight curve",
    "Body_VIP": "arm chin foot feet face hand mouth leg waist eye knee shoulder thigh",
    "Obj_VIP": "stair dumbbell chair window floor car ball handrail baseball basketball",
    "Act_VIP": "walk run swing pick bring kick put squat throw hop dance jump turn stumble stop sit lift lower "
               "raise wash stand kneel stroll rub bend balance flap jog shuffle lean rotate spin spread climb",
    "Desc_VIP": "slowly carefully fast careful slow quickly happy angry sad happily angrily sadly",
}
VIP_CLASS = {}
for _cls, _words in VIP_WORDS.items():
    for _w in _words.split():
        VIP_CLASS.setdefault(_w, _cls)

SOS, EOS, UNK = "sos/OTHER", "eos/OTHER", "unk/OTHER"
GLOVE_FILES = ("our_vab_data.npy", "our_vab_words.pkl", "our_vab_idx.pkl")
GLOVE_HINT = ("The GloVe folder comes with the text-to-motion evaluator: see "
              "https://github.com/EricGuo5513/text-to-motion (its `glove/` download, prepare/download_glove.sh), "
              "and point evaluation.glove_dir at it.")


class VocabularyError(Exception):
    """A word-vector file is missing, malformed or unsafe; the message names the file."""


def pad_tokens(tokens, max_text_len: int = 20) -> tuple[list[str], int]:
    """sos + at most `max_text_len` tokens + eos, padded with unk/OTHER to max_text_len + 2 slots."""
    kept = [SOS, *list(tokens)[:max_text_len], EOS]
    return kept + [UNK] * (max_text_len + 2 - len(kept)), len(kept)


def split_token(token: str) -> tuple[str, str]:
    """'walk/VERB' -> ('walk', 'VERB'); a token without a tag is treated as OTHER."""
    word, sep, pos = token.rpartition("/")
    return (word, pos) if sep else (token, "OTHER")


# ----------------------------------------------------------------------------
# Safe pickles
# ----------------------------------------------------------------------------

class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only lists, dicts, strings and ints; every global lookup outside those is refused."""

    ALLOWED = {("builtins", "list"), ("builtins", "dict"), ("builtins", "str"), ("builtins", "int"),
               ("__builtin__", "list"), ("__builtin__", "dict"), ("__builtin__", "unicode"), ("__builtin__", "int")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return getattr(__import__("builtins"), {"unicode": "str"}.get(name, name))
        raise pickle.UnpicklingError(f"refused to load global '{module}.{name}' (only lists, dicts, str, int are allowed)")


def load_plain_pickle(path: str | Path):
    """Read a pickle that may only contain lists/dicts/str/int, without running any code from it."""
    path = Path(path)
    if not path.is_file():
        raise VocabularyError(f"{path} is missing. {GLOVE_HINT}")
    try:
        with open(path, "rb") as f:
            return _PlainDataUnpickler(f, encoding="utf-8").load()
    except pickle.UnpicklingError as err:
        raise VocabularyError(
            f"{path} was refused: {err}. A vocabulary pickle holds only a list of words or a dict word -> index; "
            "this one asks to run or import code, so it is not loaded. Replace it with the original file."
        ) from None
    except Exception as err:  # truncated or not a pickle at all
        raise VocabularyError(f"{path} cannot be read as a pickle ({type(err).__name__}: {err}). {GLOVE_HINT}") from None


# ----------------------------------------------------------------------------
# Vocabulary: word -> row of a vector table, plus the POS rules
# ----------------------------------------------------------------------------

class WordVocabulary:
    """Maps `word/POS` tokens to (row in a word-vector table, POS class). Needs an 'unk' row."""

    def __init__(self, word_to_row: dict[str, int]):
        if "unk" not in word_to_row:
            raise VocabularyError("the vocabulary has no 'unk' word; unknown words need it.")
        self.word_to_row = dict(word_to_row)

    def __len__(self):
        return len(self.word_to_row)

    @classmethod
    def from_captions(cls, token_lists) -> "WordVocabulary":
        """unk, sos, eos, then every word seen in the captions (sorted, so the order is reproducible)."""
        words = sorted({split_token(t)[0] for tokens in token_lists for t in tokens} - {"unk", "sos", "eos"})
        return cls({w: i for i, w in enumerate(["unk", "sos", "eos", *words])})

    def lookup(self, token: str) -> tuple[int, int]:
        """(row, POS class) of one token, with the reference's VIP and unknown-word rules."""
        word, pos = split_token(token)
        if word not in self.word_to_row:
            return self.word_to_row["unk"], POS_INDEX["OTHER"]
        pos_class = VIP_CLASS.get(word, pos)
        return self.word_to_row[word], POS_INDEX.get(pos_class, POS_INDEX["OTHER"])

    def encode(self, token_lists, max_text_len: int = 20):
        """Batch of token lists -> rows (B, L) long, POS one-hots (B, L, 15) float, lengths (B,) long; L = max_text_len + 2."""
        rows, pos, lens = [], [], []
        for tokens in token_lists:
            padded, n = pad_tokens(tokens, max_text_len)
            r, p = zip(*(self.lookup(t) for t in padded))
            rows.append(r), pos.append(p), lens.append(n)
        onehot = torch.nn.functional.one_hot(torch.tensor(pos), len(POS_CLASSES)).float()
        return torch.tensor(rows), onehot, torch.tensor(lens)

    def words(self) -> list[str]:
        """Words ordered by row (a learned table's vocabulary, as saved in evaluator.pt)."""
        return sorted(self.word_to_row, key=self.word_to_row.get)


def load_glove(glove_dir: str | Path) -> tuple[WordVocabulary, np.ndarray]:
    """The official evaluator's word vectors: (vocabulary, vectors (V, 300) float32)."""
    glove_dir = Path(glove_dir)
    missing = [name for name in GLOVE_FILES if not (glove_dir / name).is_file()]
    if missing:
        raise VocabularyError(f"GloVe folder {glove_dir} lacks {', '.join(missing)}. {GLOVE_HINT}")
    data_path = glove_dir / GLOVE_FILES[0]
    try:
        vectors = np.load(data_path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise VocabularyError(f"{data_path} cannot be read as a plain .npy array ({err}). {GLOVE_HINT}") from None
    if vectors.ndim != 2:
        raise VocabularyError(f"{data_path} has shape {vectors.shape}; expected (words, 300).")
    words = load_plain_pickle(glove_dir / GLOVE_FILES[1])
    index = load_plain_pickle(glove_dir / GLOVE_FILES[2])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise VocabularyError(f"{glove_dir / GLOVE_FILES[1]} should hold a list of words (str).")
    if not isinstance(index, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in index.items()):
        raise VocabularyError(f"{glove_dir / GLOVE_FILES[2]} should hold a dict word (str) -> row (int).")
    # As the reference: the vocabulary is the word list, each word's vector the row its index names.
    absent = [w for w in words if w not in index]
    if absent:
        raise VocabularyError(f"{glove_dir / GLOVE_FILES[2]} has no row for word(s) {absent[:5]} of {GLOVE_FILES[1]}.")
    bad = [w for w in words if not 0 <= index[w] < len(vectors)]
    if bad:
        raise VocabularyError(f"{glove_dir / GLOVE_FILES[2]}: row of {bad[0]!r} is outside {data_path} ({len(vectors)} rows).")
    try:
        vocab = WordVocabulary({w: index[w] for w in words})
    except VocabularyError as err:
        raise VocabularyError(f"{glove_dir / GLOVE_FILES[1]}: {err}") from None
    return vocab, vectors.astype(np.float32)

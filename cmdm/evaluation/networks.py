"""The text-motion matching evaluator of Guo et al. 2022 (text-to-motion), rebuilt for loading its weights.

Three encoders map a caption and a motion into one co-embedding space (512-d in the official model):

    motion (B, T, 263) -> drop the 4 foot-contact dims -> MovementConvEncoder (T -> T/4 "movements")
                       -> MotionEncoderBiGRUCo (bi-GRU over T/4 steps) -> (B, 512)
    caption tokens     -> word vector (GloVe 300-d) + Linear(POS one-hot 15 -> 300)
                       -> TextEncoderBiGRUCo (bi-GRU over <= 22 tokens) -> (B, 512)

Module and parameter names follow the official `finest.tar` exactly (`main.0`, `out_net`, `input_emb`,
`gru`, `output_net.{0,1,3}`, `hidden`, `pos_emb`), so its state dicts load with strict=True.
Sizes are arguments: a smaller evaluator for other data (`cmdm.evaluation.fit`) uses the same classes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence

# The project's one checkpoint error; imported from here too by callers that catch evaluator file errors.
from cmdm.checkpoint_file import CheckpointError

ENCODER_KEYS = ("movement_encoder", "motion_encoder", "text_encoder")


@dataclass(frozen=True)
class EvaluatorSizes:
    """Widths of the three encoders. The defaults are the official HumanML3D (t2m) evaluator."""
    dim_pose: int = 263                  # motion features; the last `foot_contact_dims` are not seen
    foot_contact_dims: int = 4
    dim_movement_enc_hidden: int = 512
    dim_movement_latent: int = 512
    dim_motion_hidden: int = 1024
    dim_word: int = 300                  # GloVe width (or a learned word embedding's)
    dim_pos_ohot: int = 15               # POS classes, see word_vectorizer.POS_CLASSES
    dim_text_hidden: int = 512
    dim_coemb: int = 512                 # the shared embedding: FID, R-precision, ... live here
    unit_length: int = 4                 # frames per movement step (two stride-2 convolutions)
    max_text_len: int = 20               # caption tokens kept before sos/eos
    max_motion_length: int = 196         # motions are zero-padded (normalised) to this many frames

    @classmethod
    def from_dict(cls, d: dict) -> "EvaluatorSizes":
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


def init_weight(m: nn.Module):
    """Xavier-normal weights and zero biases for linear/conv layers, as the reference trains from."""
    if isinstance(m, (nn.Conv1d, nn.Linear)):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class MovementConvEncoder(nn.Module):
    """Two stride-2 convolutions: (B, T, C) -> (B, T/4, output_size) local "movement" features."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        # Indices 0 and 3 of `main` are the weights' names in finest.tar: keep the dropouts and activations in place.
        self.main = nn.Sequential(
            nn.Conv1d(input_size, hidden_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(hidden_size, output_size, 4, 2, 1),
            nn.Dropout(0.2),
            nn.LeakyReLU(0.2),
        )
        self.out_net = nn.Linear(output_size, output_size)
        self.apply(init_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_net(self.main(x.transpose(1, 2)).transpose(1, 2))


class MovementConvDecoder(nn.Module):
    """Mirror of the movement encoder, used only to pretrain it as an autoencoder (see fit.py)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose1d(input_size, hidden_size, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.ConvTranspose1d(hidden_size, output_size, 4, 2, 1),
            nn.LeakyReLU(0.2),
        )
        self.out_net = nn.Linear(output_size, output_size)
        self.apply(init_weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out_net(self.main(z.transpose(1, 2)).transpose(1, 2))


class _BiGRUCo(nn.Module):
    """Shared body: Linear -> bi-GRU from a learned initial state -> both final states -> MLP head."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.input_emb = nn.Linear(input_size, hidden_size)
        self.gru = nn.GRU(hidden_size, hidden_size, batch_first=True, bidirectional=True)
        self.output_net = nn.Sequential(
            nn.Linear(hidden_size * 2, hidden_size),
            nn.LayerNorm(hidden_size),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden_size, output_size),
        )
        self.input_emb.apply(init_weight)
        self.output_net.apply(init_weight)
        self.hidden = nn.Parameter(torch.randn(2, 1, hidden_size))  # learned initial state (fwd, bwd)

    def _encode(self, x: torch.Tensor, lengths) -> torch.Tensor:
        # Packing makes padded steps invisible; enforce_sorted=False keeps the caller's order
        # (the reference sorts batches by length instead; the result per item is the same).
        lengths = torch.as_tensor(lengths, dtype=torch.long).cpu()
        packed = pack_padded_sequence(self.input_emb(x), lengths, batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed, self.hidden.expand(-1, x.shape[0], -1).contiguous())
        return self.output_net(torch.cat([last[0], last[1]], dim=-1))


class MotionEncoderBiGRUCo(_BiGRUCo):
    """Movements (B, T/4, C) with lengths in movement steps -> co-embedding (B, output_size)."""

    def forward(self, movements: torch.Tensor, m_lens) -> torch.Tensor:
        return self._encode(movements, m_lens)


class TextEncoderBiGRUCo(_BiGRUCo):
    """Word vectors (B, L, word) + POS one-hots (B, L, pos) with sentence lengths -> co-embedding (B, output_size)."""

    def __init__(self, word_size: int, pos_size: int, hidden_size: int, output_size: int):
        super().__init__(word_size, hidden_size, output_size)
        self.pos_emb = nn.Linear(pos_size, word_size)
        self.pos_emb.apply(init_weight)

    def forward(self, word_embs: torch.Tensor, pos_onehot: torch.Tensor, cap_lens) -> torch.Tensor:
        return self._encode(word_embs + self.pos_emb(pos_onehot), cap_lens)


def build_encoders(sizes: EvaluatorSizes = EvaluatorSizes()) -> dict[str, nn.Module]:
    """The three encoders, keyed as in finest.tar."""
    return {
        "movement_encoder": MovementConvEncoder(sizes.dim_pose - sizes.foot_contact_dims,
                                                sizes.dim_movement_enc_hidden, sizes.dim_movement_latent),
        "motion_encoder": MotionEncoderBiGRUCo(sizes.dim_movement_latent, sizes.dim_motion_hidden, sizes.dim_coemb),
        "text_encoder": TextEncoderBiGRUCo(sizes.dim_word, sizes.dim_pos_ohot, sizes.dim_text_hidden, sizes.dim_coemb),
    }


# ----------------------------------------------------------------------------
# Loading the encoders' state dicts (the file itself is read by cmdm.evaluation.evaluator)
# ----------------------------------------------------------------------------

def check_state_dict(module: nn.Module, state: dict, path, entry: str):
    """Compare names and shapes before loading, so the error names the file, the entry and the key."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: entry '{entry}' is a {type(state).__name__}; expected a state dict.")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(repr(k) for k in missing[:5])}")
        if unexpected:
            parts.append(f"unexpected key(s) {', '.join(repr(k) for k in unexpected[:5])}")
        raise CheckpointError(
            f"{path}: '{entry}' does not match {type(module).__name__}: {'; '.join(parts)}. "
            "The file is not a text-to-motion evaluator of this architecture (or its sizes differ)."
        )
    for k, v in expected.items():
        got = state[k]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(v.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(
                f"{path}: '{entry}.{k}' has shape {shape}; {type(module).__name__} expects {tuple(v.shape)}. "
                "The evaluator sizes do not match this checkpoint."
            )


def load_encoders(encoders: dict[str, nn.Module], ckpt: dict, path) -> None:
    """Strictly load the three encoder state dicts of a checkpoint dict into `encoders`."""
    for entry, module in encoders.items():
        if entry not in ckpt:
            raise CheckpointError(
                f"{path}: no '{entry}' entry (found {sorted(k for k in ckpt if isinstance(k, str))}); an evaluator "
                f"checkpoint holds {', '.join(ENCODER_KEYS)}."
            )
        check_state_dict(module, ckpt[entry], path, entry)
        module.load_state_dict(ckpt[entry], strict=True)

"""Reading a torch file the project did not necessarily write: the one `read_checkpoint` and `CheckpointError`.

Denoiser weights (cmdm.model.checkpoint), a run's last.pt (cmdm.train) and the evaluator's finest.tar /
evaluator.pt (cmdm.evaluation) are all read here, with `torch.load(weights_only=True)`: tensors, numbers,
strings and plain containers load, pickled code does not.
"""
from __future__ import annotations

import os
import warnings

import torch


class CheckpointError(RuntimeError):
    """A file or object that cannot be loaded as what it should hold; the message names the file (and key)."""


def read_checkpoint(path, what: str = "checkpoint") -> object:
    """torch.load(weights_only=True) on CPU, with an error that names the file (`what` says what it should be)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r} does not exist")
    try:
        with warnings.catch_warnings():  # plain pickles draw a protocol warning before failing below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001: a file that is not weights fails in the unpickler in many ways
        # (UnpicklingError, BadZipFile, EOFError, KeyError on a memo index, ...): all mean "not weights"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". ")[0].rstrip(".")[:160]   # torch's long advice (weights_only=False) is not ours
        raise CheckpointError(
            f"{what} {path!r} cannot be read as PyTorch weights ({type(exc).__name__}: {first}). "
            f"Is it a truncated download or a different kind of file? Only tensors and plain "
            f"containers are accepted (it is loaded as weights only, weights_only=True).") from exc

"""Atomic file writes: write a temp file in the target's folder, then rename over the target.

A reader (or a run resumed after a kill) sees the old file or the new one, never half of one.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def _replace_with(path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_torch_save(obj, path) -> None:
    _replace_with(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path, text: str) -> None:
    _replace_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

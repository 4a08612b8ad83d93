"""Atomic file writes: write a temp file in the target's folder, then rename over the target.

A reader (or a run resumed after a kill) sees the old file or the new one, never half of one.
The file ends with the mode a plain `open(path, "w")` would give it: a new file gets 0o666 less the
umask, a replaced file keeps its mode (the temp file of `tempfile.mkstemp` alone would be 0600).
"""
from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux /proc)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # elsewhere: the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def _replace_with(path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def torch_bytes(obj) -> bytes:
    """What torch.save would write for obj (to hash it before it is on disk)."""
    import torch      # here, not with the module: the sweep's light processes (Train's controller) import this one
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj, path) -> None:
    import torch
    _replace_with(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_bytes(path, data: bytes) -> None:
    _replace_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path, text: str) -> None:
    _replace_with(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

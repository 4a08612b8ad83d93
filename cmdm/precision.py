"""Which number format the training step computes in: `training.precision` resolved against the device.

bf16 autocast runs the matmuls and attention of the forward pass in bfloat16 (tensor cores, flash attention)
while the weights, the optimiser state and the loss reduction stay float32; bfloat16 has float32's exponent
range, so no loss scaling is needed. "auto" means bf16 where the GPU computes it natively and fp32 elsewhere:
on CPU, bf16 autocast is slower than fp32 on most processors, so it is used only when asked for.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def gpu_has_bf16(device: torch.device) -> bool:
    """True on CUDA devices that compute bfloat16 natively (Ampere and newer)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": what a run with `training.precision = precision` computes in on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"training.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if gpu_has_bf16(device) else "fp32"
    if precision == "bf16" and device.type == "cuda" and not gpu_has_bf16(device):
        raise ValueError(f"training.precision = bf16, but {torch.cuda.get_device_name(device)} does not compute "
                         "bfloat16 natively (it needs an Ampere or newer GPU); set training.precision=fp32 (or auto).")
    return precision


def autocast(precision: str, device: torch.device):
    """The context the forward pass and loss run in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()

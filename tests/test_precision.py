"""training.precision: what "auto" resolves to, and that a bf16 forward pass trains like fp32's."""
import pytest
import torch
import torch.nn.functional as F

from cmdm.precision import autocast, resolve_precision
from test_model import inputs, open_dit_gates, tiny

CPU = torch.device("cpu")


def test_auto_is_fp32_on_cpu_and_explicit_choices_are_kept():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="training.precision must be one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_bf16_autocast_computes_the_matmuls_in_bfloat16_and_keeps_the_weights_float32():
    layer = torch.nn.Linear(8, 4)
    with autocast("bf16", CPU):
        y = layer(torch.randn(2, 8))
    assert y.dtype == torch.bfloat16 and layer.weight.dtype == torch.float32
    with autocast("fp32", CPU):
        assert layer(torch.randn(2, 8)).dtype == torch.float32


def _losses(precision: str, steps: int = 10) -> list[float]:
    model = tiny("dit", "adaln")
    open_dit_gates(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    text, contact, x, t, mask = inputs()
    losses = []
    for _ in range(steps):
        with autocast(precision, CPU):
            pred = model(x * 0.5, t, model.encode_conditions(text, contact), mask)
            loss = F.mse_loss(pred.float(), x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_a_bf16_training_run_tracks_fp32():
    """Same model, data and seed: the bf16 loss curve stays within a few per cent of fp32's and falls as much."""
    fp32, bf16 = _losses("fp32"), _losses("bf16")
    assert fp32[-1] < 0.8 * fp32[0] and bf16[-1] < 0.8 * bf16[0]
    gaps = [abs(a - b) / a for a, b in zip(fp32, bf16)]
    assert max(gaps) < 0.05, gaps

"""Training-step throughput of the CMDM denoiser on this machine, against its matmul peak.

    python bench/bench_model.py                       # demo and stable sizes, batch 32, T = 196
    python bench/bench_model.py --configs configs/stable.yaml --steps 5 --threads 2 --bf16
    python bench/bench_model.py --device cuda --configs configs/stable.yaml --batch 32 128   # on a GPU

One training step = encode conditions (contact encoder + text adapter; text features are
precomputed, since the frozen text encoder runs once per caption and is cached) + diffusion
loss + backward + AdamW step. FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on
one real step (matmuls and attention; elementwise work is not counted), so the achieved FLOP/s
is a lower bound of the work done. The device's dense matmul peak is measured in the same run
as torch.mm of two n x n matrices (2048 on CPU, 8192 on GPU) in the step's number format (fp32, or
bf16 under `training.precision: bf16`), just before each timed step; the ratio achieved / peak is
the figure of merit. On a GPU the step runs as training does (`cmdm.precision`'s autocast, fused
AdamW) and each line also gives the time of one epoch of HumanML3D's size (23,384 training clips).

glibc returns freed blocks above 32 MB to the OS, so each step page-faults its large activations
back in (seconds of system time per step at the stable size). The script therefore asks glibc to
keep them (mallopt, the same as `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647` in the
environment of any CPU training run); `--default-malloc` measures without it.
"""

import argparse
import ctypes
import os
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cmdm.config import load_config  # noqa: E402
from cmdm.diffusion import build_diffusion  # noqa: E402
from cmdm.model import build_model  # noqa: E402
from cmdm.precision import autocast  # noqa: E402

aten = torch.ops.aten


def _cpu_flash_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    b, h, sq, d = query_shape
    sk = key_shape[2]
    return 2 * b * h * sq * sk * d * 2  # QK^T and PV


def _cpu_flash_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs):
    return 2 * _cpu_flash_fwd(query_shape, key_shape, value_shape)  # dQ, dK, dV, dP: ~2x forward


# CPU SDPA without dropout runs a fused kernel that FlopCounterMode does not know; count it here.
CUSTOM_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
                aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd}


def keep_freed_memory() -> bool:
    """glibc: serve large blocks from the heap and never trim it (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(-4, 0)) and bool(libc.mallopt(-1, 2 ** 31 - 1))


HUMANML3D_TRAIN_CLIPS = 23384   # HumanML3D's train split with its mirrored clips


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype=torch.float32, seconds: float = 3.0) -> float:
    """Dense matmul FLOP/s of this device (torch.mm, n x n) in `dtype`."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        torch.mm(a, b)
    sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        reps += 1
        if device.type == "cuda" and reps % 10 == 0:
            sync(device)
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def make_batch(cfg, batch_size, frames, generator, device, text_dim):
    lengths = torch.randint(max(1, frames // 5), frames + 1, (batch_size,), generator=generator)
    lengths[0] = frames
    mask = torch.arange(frames)[None] < lengths[:, None]
    batch = {"motion": torch.randn(batch_size, frames, 263, generator=generator) * mask[..., None],
             "mask": mask, "length": lengths,
             "text": torch.randn(batch_size, text_dim, generator=generator)}   # the text model's width
    if cfg.data.use_contacts:
        n, c = cfg.data.contact_num_points, len(cfg.data.contact_joints)
        batch["contact"] = torch.cat([torch.randn(batch_size, n, 3, generator=generator),
                                      torch.rand(batch_size, n, c, generator=generator)], -1)
    return {k: v.to(device) for k, v in batch.items()}


def bench_config(path, batch_size, frames, steps, precision, device, compile_model=False):
    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg, load_text_encoder=False).to(device)
    diffusion = build_diffusion(cfg.diffusion)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.training.lr, weight_decay=cfg.training.weight_decay,
                            fused=device.type == "cuda")
    batch = make_batch(cfg, batch_size, frames, torch.Generator().manual_seed(0), device, model.text_dim)
    model.train()
    fwd = torch.compile(model) if compile_model else model

    def step():
        with autocast(precision, device):
            drop_text, drop_contact = model.sample_drop_masks(batch_size)
            cond = model.encode_conditions(batch["text"], batch.get("contact"), drop_text, drop_contact)
            loss = diffusion.training_loss(fwd, batch["motion"], cond, batch["mask"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip or 1e9)
        opt.step()
        return loss

    counter = FlopCounterMode(display=False, custom_mapping=CUSTOM_FLOPS)
    with counter:
        step()
    flops = counter.get_total_flops()
    step()  # warm-up (allocator, oneDNN primitives, cuDNN/cuBLAS heuristics)
    sync(device)
    # Shared machines drift: pair every timed step with a matmul-peak probe taken just before it,
    # and report the median of the per-pair ratios (and the best step against the best probe).
    peak_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    times, peaks = [], []
    for _ in range(steps):
        peaks.append(matmul_peak(device, peak_dtype, seconds=1.0))
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    ratios = sorted(flops / t / p for t, p in zip(times, peaks))
    dt = sorted(times)[len(times) // 2]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.name:>12}: {cfg.model.arch} d={cfg.model.latent_dim} L={sum(cfg.model.num_layers)} "
          f"params={n_params / 1e6:.2f}M contact points={cfg.data.contact_num_points if cfg.data.use_contacts else 0} | "
          f"B={batch_size} T={frames} {precision} on {device.type}")
    print(f"{'':>14}step {dt * 1000:.0f} ms (median of {steps}; best {min(times) * 1000:.0f}) | "
          f"{batch_size / dt:.1f} samples/s | {flops / 1e9:.1f} GFLOP/step | {flops / dt / 1e9:.1f} GFLOP/s | "
          f"{str(peak_dtype).split('.')[-1]} matmul peak {sorted(peaks)[len(peaks) // 2] / 1e9:.1f} GFLOP/s | "
          f"ratio {ratios[len(ratios) // 2]:.2f} (median), {flops / min(times) / max(peaks):.2f} (best/best) | "
          f"HumanML3D epoch {HUMANML3D_TRAIN_CLIPS / (batch_size / dt):.0f} s", flush=True)
    return ratios[len(ratios) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["configs/demo.yaml", "configs/stable.yaml"])
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--frames", type=int, default=196)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--bf16", action="store_true", help="also run under bf16 autocast (on a GPU: bf16 only, "
                    "unless --fp32 is given too)")
    ap.add_argument("--fp32", action="store_true", help="on a GPU, also run in fp32")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--compile", action="store_true", help="torch.compile the denoiser")
    ap.add_argument("--default-malloc", action="store_true", help="leave glibc's malloc settings alone")
    args = ap.parse_args()
    tuned = os.environ.get("MALLOC_MMAP_MAX_") == "0" or (not args.default_malloc and keep_freed_memory())
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
        precisions = (["fp32"] if args.fp32 else []) + (["bf16"] if args.bf16 or not args.fp32 else [])
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
        print(f"glibc malloc {'tuned (M_MMAP_MAX=0)' if tuned else 'default'}; large activations are "
              f"{'kept by the allocator' if tuned else 'mmap-ed and page-faulted every step'}")
        precisions = ["fp32"] + (["bf16"] if args.bf16 else [])
    for path in args.configs:
        for batch_size in args.batch:
            for precision in precisions:
                bench_config(path, batch_size, args.frames, args.steps, precision, device, args.compile)


if __name__ == "__main__":
    main()

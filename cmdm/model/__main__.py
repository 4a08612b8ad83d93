"""`python -m cmdm.model CONFIG [key=value ...]`: parameters per part and FLOPs per sample.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on a real forward pass of one
sample at full length (data.max_frames), split into condition encoding (once per sample; the
frozen text encoder excluded, it runs once per caption and is cached) and one denoiser call
(once per diffusion step: a training step costs ~3x that forward, sampling costs it per step).
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from cmdm.config import load_config_or_exit
from cmdm.model.cmdm import build_model

aten = torch.ops.aten


def _flash_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    b, h, sq, d = query_shape
    return 4 * b * h * sq * key_shape[2] * d  # QK^T and PV


# The fused CPU attention kernel is unknown to FlopCounterMode; count it like the CUDA ones.
CPU_ATTENTION_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _flash_cpu_flops}


def count_flops(fn) -> int:
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:  # (with grad enabled: FlopCounterMode's module tracker needs autograd)
        fn()
    return counter.get_total_flops()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    ap.add_argument("--no-text-encoder", action="store_true",
                    help="skip loading the text encoder (built-in model only)")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.config, args.overrides)
    model = build_model(cfg, load_text_encoder=not args.no_text_encoder).eval()

    print(f"{cfg.name}: arch={cfg.model.arch} latent_dim={cfg.model.latent_dim} "
          f"layers={sum(cfg.model.num_layers)} contacts={cfg.data.use_contacts}")
    counts = model.parameter_counts()
    trainable = sum(v for k, v in counts.items() if "frozen" not in k)
    for part, n in counts.items():
        print(f"  {part:<45} {n / 1e6:9.3f} M")
    print(f"  {'trainable total (saved in checkpoints)':<45} {trainable / 1e6:9.3f} M")

    T = cfg.data.max_frames
    text = torch.randn(1, model.text_dim)
    if model.text_encoder is not None and cfg.model.text_model.output == "tokens":
        text = torch.randn(1, cfg.model.text_model.max_length + 2, model.text_dim)
    contact = None
    if cfg.data.use_contacts:
        contact = torch.rand(1, cfg.data.contact_num_points, 3 + len(cfg.data.contact_joints))
    cond_flops = count_flops(lambda: model.encode_conditions(text, contact))
    cond = model.encode_conditions(text, contact)
    x, t, mask = torch.randn(1, T, model.motion_dim), torch.zeros(1, dtype=torch.long), torch.ones(1, T, dtype=torch.bool)
    fwd_flops = count_flops(lambda: model(x, t, cond, mask))
    print(f"FLOPs per sample (T={T}): condition encoding {cond_flops / 1e9:.3f} G (once per sample), "
          f"denoiser forward {fwd_flops / 1e9:.3f} G (per diffusion step); "
          f"training step ~{3 * (cond_flops + fwd_flops) / 1e9:.2f} G (forward + backward)")


if __name__ == "__main__":
    main()

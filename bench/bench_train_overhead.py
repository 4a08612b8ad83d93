"""What Ray costs a training run: the same epochs of a config as (a) a plain PyTorch loop in this process
and (b) `train_ray.py` with one worker, side by side in one run.

    python bench/bench_train_overhead.py [CONFIG] [--epochs 3] [key=value ...]

Reports total wall time of each, the per-epoch time once training has started (epochs 2.., from the
loop's own timer in (b)), and the ratios (b)/(a). Evaluation is pushed past the last epoch in both so
that only training is compared; start-up (Ray, workers, data loading, text encoder) is reported apart.
Not a test: numbers depend on the machine.
"""
import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plain_loop(cfg, epochs: int) -> tuple[float, list[float]]:
    """(a): data, model, AdamW + schedule + clipping, the same TrainStep, no Ray, no evaluation."""
    from torch.utils.data import DataLoader
    from cmdm.data.humanml3d import collate, dataset_from_config
    from cmdm.diffusion import build_diffusion
    from cmdm.model import build_model
    from cmdm.model.text import load_text_cache
    from cmdm.train import TrainStep, lr_factor

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    train_set = dataset_from_config(cfg.data, "train", train=True, seed=cfg.seed, progress=False)
    loader = DataLoader(train_set, batch_size=cfg.task.train.batch_size, shuffle=True, collate_fn=collate,
                        num_workers=cfg.task.train.num_workers, drop_last=True)
    model = build_model(cfg)
    load_text_cache(model, cfg)                 # as the Ray loop does: caption features from the disk cache
    step_module = TrainStep(model, build_diffusion(cfg.diffusion))
    params = [p for p in model.parameters() if p.requires_grad]
    tr = cfg.training
    opt = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, tr.warmup_steps, total, tr.lr_scheduler))
    epoch_times = []
    for _ in range(epochs):
        te = time.time()
        step_module.train()
        for batch in loader:
            loss = step_module(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tr.grad_clip)
            opt.step()
            sched.step()
        epoch_times.append(time.time() - te)
    return time.time() - t0, epoch_times


def ray_run(config: str, overrides: list[str], epochs: int, out: str) -> tuple[float, list[float]]:
    """(b): train_ray.py with one worker; per-epoch times read from its runtime.log."""
    cmd = [sys.executable, "train_ray.py", config, "--name", "bench-overhead", f"output_root={out}",
           f"training.max_epochs={epochs}", f"training.eval_every_epochs={epochs + 1}", "ray.num_workers=1",
           *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.exit(f"train_ray.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    log = (Path(out) / "bench-overhead" / "logs" / "runtime.log").read_text()
    return wall, [float(s) for s in re.findall(r"completed\. Avg Loss: [\d.]+ \(([\d.]+) s\)", log)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", default="configs/demo.yaml")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("overrides", nargs="*")
    args = p.parse_intermixed_args()
    from cmdm.config import load_config
    from cmdm.config import absolute_paths
    from cmdm.prepare import prepare
    # The last epoch evaluates in train_ray.py; (b) runs one epoch more and drops it from the comparison.
    cfg = absolute_paths(load_config(args.config, args.overrides))
    prepare(cfg)
    torch.set_num_threads(max(1, int(cfg.ray.cpus_per_worker)))
    with tempfile.TemporaryDirectory() as out:
        wall_b, epochs_b = ray_run(args.config, args.overrides, args.epochs + 1, out)
    wall_a, epochs_a = plain_loop(cfg, args.epochs)
    epochs_b = epochs_b[:args.epochs]
    steady_a = sum(epochs_a[1:]) / max(1, len(epochs_a) - 1)
    steady_b = sum(epochs_b[1:]) / max(1, len(epochs_b) - 1)
    print(f"config {args.config}, {args.epochs} epochs, torch threads {torch.get_num_threads()}")
    print(f"{'':28}{'(a) plain':>12}{'(b) Ray':>12}{'(b)/(a)':>10}")
    print(f"{'per epoch, epochs 2.. (s)':28}{steady_a:12.2f}{steady_b:12.2f}{steady_b / steady_a:10.3f}")
    print(f"{'first epoch (s)':28}{epochs_a[0]:12.2f}{epochs_b[0]:12.2f}{epochs_b[0] / epochs_a[0]:10.3f}")
    print(f"{'whole command (s)':28}{wall_a:12.2f}{wall_b:12.2f}{wall_b / wall_a:10.3f}")
    print(f"start-up outside the epochs: (a) {wall_a - sum(epochs_a):.1f} s, (b) {wall_b - sum(epochs_b):.1f} s "
          "(b includes Ray start, worker start, one extra epoch + its evaluation, checkpoint writes)")


if __name__ == "__main__":
    main()

"""train_ray.py end to end on Ray (tiny model, tiny synthetic data): the guide's outputs, best-pair, resume after
SIGKILL, a worker failure retried from the last checkpoint (2 DDP workers), non-finite stop, fine-tune init.

Each run starts its own local Ray (~20-40 s on 2 cores); the runs are shared between tests where possible.
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16  # steps per epoch: 261 training clips of the 200-clip set, 16 per step (one worker or two of 8)


def overrides(tiny, **extra):
    return [f"{k}={v}" for k, v in tiny_config(tiny, **extra).items()]


def train(tiny, name, *args, env=None, **extra):
    cmd = [sys.executable, "train_ray.py", "configs/demo.yaml", "--name", name, *overrides(tiny, **extra), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def finished(tiny):
    proc = train(tiny, "run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tiny / "outputs" / "run", proc


def test_run_writes_the_guides_layout_and_lines(finished):
    run, proc = finished
    log = (run / "logs" / "runtime.log").read_text()
    assert re.search(r"\[TRAIN\] ==> Epoch:\s+1 \| Iter:\s+5 \| Step:\s+5 \| Loss:\s+[\d.]+ \| Grad:\s+[\d.]+ \| "
                     r"LR: \d\.\d\de-\d\d", log)
    assert re.search(r"Epoch\s+2 completed\. Avg Loss: [\d.]+", log)
    assert re.search(r"\[EVAL\] FID: [\d.]+ Top1: [\d.]+ Top2: [\d.]+ Top3: [\d.]+", log)
    assert re.search(r"✓ Best model saved! FID: [\d.]+ \(Step: \d+\)", log)
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    best = json.loads((run / "checkpoints" / "best_metrics.json").read_text())
    saved = torch.load(run / "checkpoints" / "model_best.pt", weights_only=True)
    sha = hashlib.sha256((run / "checkpoints" / "model_best.pt").read_bytes()).hexdigest()
    assert best.pop("checkpoint_sha256") == sha   # the json is the pair of this very model_best.pt
    assert saved["metrics"] == best and best["best_metric"] == "fid" and len(best["config_hash"]) == 12
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 2 * STEPS and last["epoch"] == 2 and {"optimizer", "scheduler", "rng"} <= set(last)
    status = json.loads((run / "status.json").read_text())
    assert status["stop_reason"] == "finished" and status["best"] == best["fid"]
    assert (run / "config.yaml").is_file() and any((run / "ray").iterdir())


def test_tensorboard_has_curves_metrics_and_a_rendered_motion(finished):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run, _ = finished
    acc = EventAccumulator(str(run / "logs"), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/grad_norm", "train/lr", "eval/fid", "eval/top1", "eval/top3"} <= set(tags["scalars"])
    assert "samples/generated" in tags["images"]
    assert len(acc.Scalars("eval/fid")) == 2


def test_sigkill_then_rerun_resumes_at_the_same_step_and_lr(tiny):
    cmd = [sys.executable, "train_ray.py", "configs/demo.yaml", "--name", "killed",
           *overrides(tiny, **{"training.max_epochs": 3})]
    last = tiny / "outputs" / "killed" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)          # the driver and everything in its session, at once
    proc.wait()
    assert last.exists(), "the run never wrote last.pt"
    killed_at = torch.load(last, weights_only=True)
    assert killed_at["epoch"] < 3
    time.sleep(2)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (tiny / "outputs" / "killed" / "logs" / "runtime.log").read_text()
    resumed = re.findall(r"Resumed from \S+ at epoch (\d+), step (\d+), lr ([\d.e+-]+)", log)
    assert resumed, log[-2000:]
    epoch, step, lr = resumed[-1]
    assert int(step) >= killed_at["step"] and int(epoch) >= killed_at["epoch"]
    final = torch.load(last, weights_only=True)
    assert final["step"] == 3 * STEPS and final["epoch"] == 3          # the same end as an uninterrupted run
    from cmdm.train import lr_factor
    from cmdm.config import load_config
    base_lr = load_config(str(ROOT / "configs" / "demo.yaml")).training.lr
    assert float(lr) == pytest.approx(base_lr * lr_factor(int(step), 5, 3 * STEPS, "cosine"), rel=1e-2)


def test_worker_failure_is_retried_from_the_last_checkpoint_with_two_ddp_workers(tiny):
    proc = train(tiny, "retry", env={"CMDM_INJECT_FAILURE_AT_STEP": "20"},
                 **{"ray.num_workers": 2, "ray.max_failures": 1, "task.train.batch_size": 8})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "injected failure at step 20" in out
    log = (tiny / "outputs" / "retry" / "logs" / "runtime.log").read_text()
    assert "2 worker(s)" in log and re.search(rf"Resumed from \S+ at epoch 1, step {STEPS}", log)
    assert torch.load(tiny / "outputs" / "retry" / "checkpoints" / "last.pt", weights_only=True)["step"] == 2 * STEPS


def test_non_finite_loss_stops_with_the_remedy(tiny):
    proc = train(tiny, "nan", **{"training.lr": "1e30", "training.grad_clip": 0})
    assert proc.returncode == 1
    assert "non-finite" in proc.stderr
    log = (tiny / "outputs" / "nan" / "logs" / "runtime.log").read_text()
    assert re.search(r"Non-finite (loss|gradient norm) at epoch 1, step \d+", log)
    assert "lower training.lr" in log and "training.grad_clip=0.5" in log


def test_resume_from_another_arch_partially_and_a_bad_file(finished, tiny, tmp_path):
    run, _ = finished
    best = run / "checkpoints" / "model_best.pt"
    proc = train(tiny, "finetune", "--resume-from", str(best), "--partial",
                 **{"model.arch": "trans_enc", "training.max_epochs": 1})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tiny / "outputs" / "finetune" / "logs" / "runtime.log").read_text()
    assert re.search(r"Initialised weights from .*model_best.pt: matched \d+ \| missing \d+", log)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = train(tiny, "bad", "--resume-from", str(bad))
    assert proc.returncode == 2 and "bad.pt" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_cli_prints_the_table_and_writes_json(finished, tmp_path):
    run, _ = finished
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "cmdm.evaluate", str(run / "checkpoints" / "model_best.pt"),
                           "--samples", "32", "--steps", "5", "--replications", "2", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"ground truth\s+[\d.]+ ±[\d.]+", proc.stdout) and re.search(r"model\s+[\d.]+ ±", proc.stdout)
    result = json.loads(out.read_text())
    assert result["replications"] == 2 and result["num_samples"] == 32 and result["sampler"] == "ddim"
    gt, model = result["rows"]["ground truth"], result["rows"]["model"]
    assert gt["fid"]["mean"] < model["fid"]["mean"]            # real motions sit closer to real motions
    assert all(k in model for k in ("top1", "top2", "top3", "fid", "mm_dist"))
    bad = subprocess.run([sys.executable, "-m", "cmdm.evaluate", str(tmp_path / "missing.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing.pt" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluation_takes_caption_features_from_the_runs_cache(finished):
    """cmdm.evaluate reuses the caption features train_ray cached next to the data: no transformer to load."""
    from cmdm.data.humanml3d import dataset_from_config
    from cmdm.evaluation.generate import load_for_evaluation
    run, _ = finished
    cfg, model, _ = load_for_evaluation(str(run / "checkpoints" / "model_best.pt"), None)
    captions = sorted({c.text for e in dataset_from_config(cfg.data, "test", train=False, progress=False).entries
                       for c in e.captions})
    feats, _ = model.text_encoder.encode(captions[:64])
    assert feats.shape == (min(64, len(captions)), 1, model.text_dim)
    assert model.text_encoder.num_encoded == 0 and not model.text_encoder.loaded

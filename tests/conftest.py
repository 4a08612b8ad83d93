"""Tests never touch the network: any hub lookup must fail fast instead of downloading."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A 200-clip synthetic set and an evaluator fitted on it for a few epochs (shared by the Ray tests)."""
    from cmdm.data.synthetic import generate_dataset
    from cmdm.evaluation.fit import FitConfig, ensure_evaluator
    base = tmp_path_factory.mktemp("tiny")
    data = generate_dataset(base / "data", num_clips=200, seed=0, num_points=256, progress=False)
    ensure_evaluator(data, base / "evaluator", progress=False, cfg=FitConfig(epochs=3, ae_epochs=0),
                     log=lambda *a: None)
    return base


def tiny_config(tiny, **extra) -> dict:
    """Dotted overrides of configs/demo.yaml for a seconds-long run on the `tiny` set (16 steps per epoch)."""
    values = {
        "output_root": tiny / "outputs", "data.root": tiny / "data", "data.synthetic_num_clips": 200, "data.synthetic_num_points": 256,
        "data.contact_num_points": 64, "evaluation.evaluator_dir": tiny / "evaluator",
        "model.latent_dim": 32, "model.num_layers": "[1,1]", "model.num_heads": 2, "model.dim_feedforward": 64,
        "model.condition_embedder.num_latents": 4, "model.condition_embedder.contact_num_tokens": 8,
        "model.condition_embedder.contact_dim": 16, "diffusion.steps": 100, "training.max_epochs": 2,
        "training.eval_every_epochs": 1, "training.eval_num_samples": 32, "training.warmup_steps": 5,
        "training.log_every_steps": 5, "evaluation.ddim_steps": 5, "task.train.batch_size": 16,
        "task.train.num_workers": 0, "ray.cpus_per_worker": 1,
    }
    values.update(extra)
    return values

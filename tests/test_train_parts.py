"""The recipe's pieces in isolation: lr schedule, EMA, best tracking / early stopping, atomic best pair."""
import hashlib
import json

import pytest
import torch

from cmdm.config import load_config
from cmdm.run_files import RunFiles, reconcile_best, save_best
from cmdm.train import BestTracker, EMA, lr_factor


def test_warmup_is_linear_then_cosine_reaches_zero():
    total, warm = 1000, 100
    assert lr_factor(0, warm, total, "cosine") == pytest.approx(1 / 100)
    assert lr_factor(49, warm, total, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, warm, total, "cosine") == pytest.approx(1.0)
    assert lr_factor(100, warm, total, "cosine") == pytest.approx(1.0)
    mid = warm + (total - warm) // 2
    assert lr_factor(mid, warm, total, "cosine") == pytest.approx(0.5)
    assert lr_factor(total, warm, total, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(550, warm, total, "linear") == pytest.approx(0.5)
    assert lr_factor(999, warm, total, "constant") == 1.0
    assert lr_factor(10, 0, total, "constant") == 1.0


def test_scheduler_state_resumes_at_the_same_lr():
    model = torch.nn.Linear(2, 2)
    make = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, 10, 100, "cosine"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = make(opt)
    for _ in range(37):
        opt.step()
        sched.step()
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched2 = make(opt2)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step(); sched.step(); opt2.step(); sched2.step()
    assert sched2.get_last_lr()[0] == pytest.approx(1e-3 * lr_factor(38, 10, 100, "cosine"))


def test_ema_tracks_the_average_and_swaps_back():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)            # 0.5 * 0 + 0.5 * 1
    ema.update(model)            # 0.5 * 0.5 + 0.5 * 1
    assert ema.shadow["weight"].item() == pytest.approx(0.75)
    with ema.applied(model):
        assert model.weight.item() == pytest.approx(0.75)
    assert model.weight.item() == 1.0


def test_best_tracker_fid_lower_is_better_and_patience_counts_min_delta():
    t = BestTracker("fid", min_delta=0.01)
    assert t.update(1.0, 10) and t.bad_evals == 0
    assert t.update(0.995, 20)          # a new best, but not by more than min_delta
    assert t.bad_evals == 1
    assert not t.update(1.2, 30) and t.bad_evals == 2
    assert t.update(0.5, 40) and t.bad_evals == 0 and t.best_step == 40
    top = BestTracker("top1", min_delta=0.0)
    assert top.update(0.3, 1) and not top.update(0.2, 2) and top.update(0.4, 3)


def test_best_pair_is_written_together_and_repaired(tmp_path):
    cfg = load_config("configs/demo.yaml")
    files = RunFiles(tmp_path)
    record = {"fid": 0.5, "top1": 0.3, "step": 100, "epoch": 2, "best_metric": "fid", "config_hash": "abc"}
    save_best(files, {"w": torch.ones(2)}, record, cfg)
    on_disk = json.loads(files.best_json.read_text())
    assert on_disk == {**record, "checkpoint_sha256": hashlib.sha256(files.best.read_bytes()).hexdigest()}
    saved = torch.load(files.best, weights_only=True)
    assert saved["metrics"] == record and torch.equal(saved["model"]["w"], torch.ones(2))
    assert not [p for p in files.checkpoints.iterdir() if p.name.startswith(".")]  # no temp file left
    # A crash between the two renames leaves a stale json: the .pt is the truth and the json is repaired.
    files.best_json.write_text(json.dumps({**record, "fid": 9.0}))
    assert reconcile_best(files) == record
    assert json.loads(files.best_json.read_text()) == on_disk
    files.best_json.unlink()
    assert reconcile_best(files) == record and files.best_json.is_file()


def test_a_compiled_training_step_computes_what_the_eager_one_does(monkeypatch):
    """training.compile: the same loss and the same gradients as eager on the same batch and seed, and the
    compiled denoiser trains the model's own parameters (what checkpoints, the EMA and evaluation use).
    The graph is captured by TorchDynamo and differentiated by AOTAutograd as in training; only the code
    generation differs: the aot_eager backend instead of Inductor's C++ (a minute of compiling on 2 cores)."""
    import functools
    from cmdm.diffusion import GaussianDiffusion
    from cmdm.train import TrainStep
    from test_model import inputs, open_dit_gates, tiny

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    text, contact, x, _, mask = inputs()
    batch = {"text": text, "contact": contact, "motion": x * 0.5, "mask": mask}
    results = []
    for compiled in (False, True):
        model = tiny("dit", "adaln")
        open_dit_gates(model)
        model.eval()                    # no dropout: a compiled graph draws its dropout masks from another stream
        step = TrainStep(model, GaussianDiffusion(100, "cosine", "x0"), compile_denoiser=compiled)
        assert (type(step.denoiser).__name__ == "OptimizedModule") == compiled
        torch.manual_seed(3)
        loss = step(batch)
        loss.backward()
        assert set(map(id, step.parameters())) == set(map(id, model.parameters()))
        results.append((loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-5)
    assert len(compiled_grads) == len(eager_grads) > 0
    for a, b in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_a_lost_node_message_gives_one_fix_whichever_way_the_rerun_ended(tmp_path):
    """describe_failure: lost node with no room left names the nodes' shortfall and its one fix; with the
    retries spent or off, the fix is the retry setting. Always: the node, the step kept, how to resume."""
    from cmdm.config import RayConfig
    from cmdm.resources import ResourceError, check_fits
    from cmdm.train import describe_failure

    files = RunFiles(tmp_path / "run")
    files.checkpoints.mkdir(parents=True)
    torch.save({"step": 120}, files.last)
    lost = [{"NodeID": "ab" * 28, "NodeManagerAddress": "10.0.0.7"}]
    err = RuntimeError("Worker group failed\nRuntimeError: Connection closed by peer")
    cfg = RayConfig(num_workers=2, cpus_per_worker=2, lost_node_retries=3)
    with pytest.raises(ResourceError) as short:
        check_fits(cfg, {"CPU": 2.0, "GPU": 0.0}, where="the nodes left", prefix="ray.", what="the cluster")

    room = describe_failure(err, lost, files, cfg, reruns=1, room=str(short.value))
    spent = describe_failure(err, lost, files, cfg, reruns=3)
    off = describe_failure(err, lost, files, RayConfig(lost_node_retries=0))
    for text in (room, spent, off):
        assert "10.0.0.7 (id abababababab)" in text and "(step 120)" in text and "\n" not in text
        assert "Connection closed by peer" in text
    assert room.count("Fix:") == 1 and "lower ray.num_workers and ray.cpus_per_worker" in room
    assert "ray.lost_node_retries" not in room and "Add a node" not in room
    assert "Raise ray.lost_node_retries" in spent and "set ray.lost_node_retries=3" in off


def test_the_trainer_drops_only_the_datasets_callback_and_only_without_datasets(tmp_path):
    """CMDMTrainer = TorchTrainer less Train V2's DatasetsCallback (a DatasetManager actor per run) when it gets
    no Ray Datasets; every other default callback of Ray's, in Ray's order. Fails if Ray renames the private
    method it overrides or the callback (ray is pinned to 2.60.x in pyproject.toml)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from cmdm.train import CMDMTrainer
    kw = {"scaling_config": ray.train.ScalingConfig(num_workers=1),
          "run_config": ray.train.RunConfig(storage_path=str(tmp_path))}
    names = lambda trainer: [type(c).__name__ for c in trainer._create_default_callbacks()]   # noqa: E731
    ours, rays = names(CMDMTrainer(lambda: None, **kw)), names(TorchTrainer(lambda: None, **kw))
    assert DatasetsCallback.__name__ in rays and len(rays) > 3
    assert ours == [n for n in rays if n != DatasetsCallback.__name__]
    with_data = CMDMTrainer(lambda: None, datasets={"train": ray.data.range(1)}, **kw)
    assert names(with_data) == rays

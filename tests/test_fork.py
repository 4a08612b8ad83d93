"""A sweep's remedy trial continuing a diagnosed trial's line (cmdm.train.continue_line), through the real loop on a
local Ray (tiny model, tiny data): a parent trains one epoch; one child continues from its last.pt (the whole
state, optimizer moments included), another from its model_best.pt (weights at the best, moments from zero); both
train to their own max_epochs with their own lr at the restored schedule position and their own weight decay.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from cmdm.train import lr_factor

ROOT = Path(__file__).resolve().parents[1]
STEPS = 16              # steps per epoch of the tiny set (tests/test_train_ray.py)
PARENT_LR, CHILD_LR, CHILD_WD = 1e-3, 6.667e-4, 1e-3

SCRIPT = r"""
import json, sys
from cmdm.config import absolute_paths, load_config, update_config
from cmdm.run_files import RunFiles
from cmdm.train import make_trainer, run_training
spec = json.loads(sys.argv[1])
def config(values):
    return absolute_paths(update_config(load_config("configs/demo.yaml"), values))
parent = config(spec["parent"])
run_training(parent)
files = RunFiles(parent.run_dir)
for name, kind in (("from_last", "last"), ("from_best", "best")):
    cfg = config(spec[name])
    fork = {"parent": parent.name, "rule": "loss_oscillating", "kind": kind, "step": 16, "epoch": 1,
            "checkpoint": str(files.last if kind == "last" else files.best)}
    make_trainer(cfg, RunFiles(cfg.run_dir), fork=fork).fit()
"""


@pytest.fixture(scope="module")
def forked(tiny):
    def values(name, **extra):
        v = {k: (str(x) if isinstance(x, Path) else x) for k, x in tiny_config(tiny, **extra).items()}
        return {**v, "model.num_layers": [1, 1], "name": name, "output_root": str(tiny / "outputs" / "fork")}
    spec = {"parent": values("parent", **{"training.max_epochs": 1, "training.lr": PARENT_LR}),
            **{name: values(name, **{"training.max_epochs": 2, "training.lr": CHILD_LR,
                                     "training.weight_decay": CHILD_WD, "model.dropout": 0.2})
               for name in ("from_last", "from_best")}}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(spec)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tiny / "outputs" / "fork"


def _first_train_line(log: str) -> tuple[int, float]:
    m = re.search(r"\[TRAIN\].*Step:\s+(\d+) \|.*LR: (\S+)", log)
    return int(m[1]), float(m[2])


@pytest.mark.parametrize("name, moments", [("from_last", 2 * STEPS), ("from_best", STEPS)])
def test_a_child_continues_the_parents_step_with_its_own_lr_and_weight_decay(forked, name, moments):
    last = torch.load(forked / name / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == 2 * STEPS and last["epoch"] == 2              # only the epoch left after the parent's
    assert last["evaluations"] == 1                                      # the child's own evaluations
    assert last["scheduler"]["base_lrs"] == [pytest.approx(CHILD_LR)] and last["scheduler"]["last_epoch"] == 2 * STEPS
    group = last["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == pytest.approx(CHILD_LR) and group["weight_decay"] == pytest.approx(CHILD_WD)
    # AdamW's step count: the parent's 16 steps carried on (from last.pt), or moments from zero (model_best.pt)
    adam_steps = {float(s["step"]) for s in last["optimizer"]["state"].values()}
    assert adam_steps == {float(moments)}
    log = (forked / name / "logs" / "runtime.log").read_text()
    assert "Continued trial parent's line" in log and f"at epoch 1, step {STEPS}" in log
    assert ("optimizer moments start at zero" in log) == (name == "from_best")
    # the first step logged after the fork is at the parent's step + 4, with the child's lr at that position
    step, lr = _first_train_line(log)
    assert step == STEPS + 4
    total = 2 * STEPS
    assert lr == pytest.approx(CHILD_LR * lr_factor(step, 5, total, "cosine"), rel=1e-2)
    assert json.loads((forked / name / "status.json").read_text())["epoch"] == 2

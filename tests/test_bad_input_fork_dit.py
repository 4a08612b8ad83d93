"""Bad-input rows: --resume-from a DiT checkpoint of the guide's fork under settings it was not built with."""
import json
from pathlib import Path

import pytest
import torch

from badinput import Case, check

KEYS = json.loads((Path(__file__).parent / "data" / "fork_dit_keys.json").read_text())["configs"]["dit_small"]["keys"]


def write_fork_checkpoint(tmp):
    # The fork's small dit (latent 64, 2 blocks, ff 128: the demo config's sizes), `module.`-prefixed.
    state = {"module." + k: torch.zeros(shape) for k, shape in KEYS}
    torch.save(state, tmp / "model_best.pt")


def write_old_layout_checkpoint(tmp):
    torch.save({"model": {"motion_adapter.weight": torch.zeros(64, 263),
                          "blocks.0.adaLN_modulation.1.weight": torch.zeros(576, 64),
                          "cond_type_embed": torch.zeros(2, 64)}}, tmp / "old.pt")


CASES = [
    Case("resume-from-fork-dit-under-guide-latents",
         ["train_ray.py", "{root}/configs/demo.yaml", "output_root={tmp}/outputs", "--resume-from", "{tmp}/model_best.pt"],
         setup=write_fork_checkpoint,
         names=["{tmp}/model_best.pt", "model.condition_embedder.num_latents=1",
                "model.condition_embedder.fusion_method=adaln"],
         fix=["overrides", "--partial"]),
    Case("resume-from-dit-checkpoint-of-the-old-layout",
         ["train_ray.py", "{root}/configs/demo.yaml", "output_root={tmp}/outputs", "--resume-from", "{tmp}/old.pt"],
         setup=write_old_layout_checkpoint,
         names=["{tmp}/old.pt", "blocks.N"], fix=["train again", "--partial"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)

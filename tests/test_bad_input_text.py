"""Bad-input rows for the text model (model.text_model.name): files this machine lacks stop a run before any work."""
import pytest
import torch

from badinput import Case, check

STABLE, DEMO = "{root}/configs/stable.yaml", "{root}/configs/demo.yaml"
CLIP = "openai/clip-vit-base-patch32"
HOW = ["snapshot_download", "model.text_model.name=DIR", "configs/demo.yaml", "MiniLM"]


def clip_in_local_cache() -> bool:
    from huggingface_hub import try_to_load_from_cache
    return isinstance(try_to_load_from_cache(CLIP, "config.json"), str)


def data_folder(tmp):
    (tmp / "data").mkdir()   # an (empty) HumanML3D folder: the text model is what is missing


def empty_folder(tmp):
    (tmp / "clip").mkdir()


def config_only(tmp):
    from transformers import CLIPTextConfig
    CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                   projection_dim=16).save_pretrained(tmp / "clip")


def state_dict(tmp):
    torch.save({"motion_adapter.weight": torch.zeros(1)}, tmp / "sd.pt")


OFFLINE = {"HF_HUB_OFFLINE": "1"}
CASES = [
    # stable.yaml is the fork's model with CLIP ViT-B/32: without its weights, nothing starts (no data, no Ray)
    Case("train-stable-without-clip", ["train_ray.py", STABLE, "data.root={tmp}/data", "output_root={tmp}/out"],
         setup=data_folder, names=["model.text_model.name", CLIP], fix=HOW, env=OFFLINE),
    Case("evaluate-stable-without-clip", ["cmdm.evaluate", "{tmp}/sd.pt", "data.root={tmp}/data", "--config", STABLE],
         setup=state_dict, names=["model.text_model.name", CLIP], fix=HOW, env=OFFLINE),
    Case("train-text-model-folder-holds-no-model",
         ["train_ray.py", DEMO, "model.text_model.name={tmp}/clip", "data.root={tmp}/data", "output_root={tmp}/out"],
         setup=empty_folder, names=["model.text_model.name", "{tmp}/clip"], fix=["config.json", "DIR"], env=OFFLINE),
    Case("train-text-model-folder-without-weights",
         ["train_ray.py", DEMO, "model.text_model.name={tmp}/clip", "data.root={tmp}/data", "output_root={tmp}/out"],
         setup=config_only, names=["model.text_model.name", "{tmp}/clip"], fix=["weights", "DIR"], env=OFFLINE),
    Case("tune-stable-without-clip", ["tune_ray.py", "{root}/sweeps/stable.yaml", "base.data.root={tmp}/data",
                                      "output_root={tmp}/out", "resources.use_gpu=false", "resources.cpus_per_worker=1"],
         setup=data_folder, names=["model.text_model.name", CLIP], fix=HOW + ["base.model.text_model.name"], env=OFFLINE),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    if "stable" in case.id and clip_in_local_cache():
        pytest.skip(f"{CLIP} is in this machine's Hugging Face cache")
    outcome = check(case, tmp_path, monkeypatch)
    data = tmp_path / "data"
    assert not (data.exists() and any(data.iterdir())) and not (tmp_path / "out").exists()  # before any work
    assert "Ray" not in outcome.out

"""Bad-input rows for the command lines: evaluate, train_ray.py (--resume-from, a rerun's last.pt), tune_ray.py
(no arguments, export) and the evaluator fit. No row trains, fits or starts Ray: every mistake is refused before.

The checkpoints the rows need are tiny models built here (configs/demo.yaml with a 32-wide, 2-layer model)."""

import pytest
import torch

from badinput import ROOT, Case, check

DEMO = "{root}/configs/demo.yaml"
TINY = ["model.latent_dim=32", "model.num_layers=[1,1]", "model.num_heads=2", "model.dim_feedforward=64",
        "model.condition_embedder.num_latents=4", "model.condition_embedder.contact_num_tokens=8",
        "model.condition_embedder.contact_dim=16", "diffusion.steps=100"]
# train_ray.py on the demo config with the tiny model; its outputs (and any data) would go under {tmp}
TRAIN = ["train_ray.py", DEMO, "output_root={tmp}/outputs", "data.root={tmp}/data", *TINY]
RUN = "{tmp}/outputs/CMDM-Demo"


def tiny_cfg(tmp, *extra):
    from cmdm.config import load_config
    return load_config(str(ROOT / "configs" / "demo.yaml"),
                       [f"output_root={tmp}/outputs", f"data.root={tmp}/data", *TINY, *extra])


def tiny_model(cfg):
    from cmdm.model import build_model
    torch.manual_seed(0)
    return build_model(cfg, load_text_encoder=False)


def project_checkpoint(name, *extra, config=None):
    """setup: {tmp}/<name>, a model_best.pt-like file of the tiny model (its config inside, or `config`)."""
    def setup(tmp):
        from cmdm.config import config_to_dict
        cfg = tiny_cfg(tmp, *(e.replace("{tmp}", str(tmp)) for e in extra))
        torch.save({"model": tiny_model(cfg).state_dict(), "config": config or config_to_dict(cfg),
                    "format": "cmdm-checkpoint", "version": 1}, tmp / name)
    return setup


def save(name, obj):
    def setup(tmp):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj(tmp) if callable(obj) else obj, tmp / name)
    return setup


def write(name, text):
    def setup(tmp):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    return setup


def other_shapes(tmp):
    return tiny_model(tiny_cfg(tmp, "model.latent_dim=16")).state_dict()


def last_pt_of_another_model(tmp):
    from cmdm.config import config_to_dict
    cfg = tiny_cfg(tmp, "model.latent_dim=16")
    return {"model": tiny_model(cfg).state_dict(), "step": 10, "config": config_to_dict(cfg)}


def trial(tmp, trial_id="t1", fid=1.0, config=True):
    """A finished-looking sweep trial: checkpoints/model_best.pt + best_metrics.json (the pair) + config.yaml."""
    from cmdm.config import save_config
    from cmdm.run_files import RunFiles, save_best
    cfg = tiny_cfg(tmp)
    files = RunFiles(tmp / "sweep" / "trials" / trial_id)
    save_best(files, {"w": torch.full((2,), fid)}, {"fid": fid, "step": 10, "epoch": 1, "best_metric": "fid"}, cfg)
    if config:
        save_config(cfg, files.config)
    return files


def sweep_folder(info='{"metric": "fid", "mode": "min"}', trials=True, config=True):
    def setup(tmp):
        (tmp / "sweep").mkdir()
        (tmp / "sweep" / "sweep.json").write_text(info)
        if trials:
            trial(tmp, config=config)
    return setup


def both(*setups):
    return lambda tmp: [s(tmp) for s in setups]


EVAL = ["cmdm.evaluate", "{tmp}/model.pt"]
CKPT = project_checkpoint("model.pt")
HUMANML3D = project_checkpoint("model.pt", "data.name=humanml3d", "evaluation.evaluator_dir={tmp}/t2m",
                               "evaluation.glove_dir={tmp}/glove")

CASES = [
    # ---------------- python -m cmdm.evaluate
    Case("evaluate-text-file", EVAL, setup=write("model.pt", "hello"), names=["{tmp}/model.pt"], fix=["weights"]),
    Case("evaluate-missing-file", EVAL, names=["{tmp}/model.pt"], fix=["does not exist"]),
    Case("evaluate-a-list", EVAL, setup=save("model.pt", [1, 2]), names=["{tmp}/model.pt"], fix=["config"]),
    Case("evaluate-raw-state-dict-without-config", EVAL, setup=save("model.pt", {"w": torch.ones(2)}),
         names=["{tmp}/model.pt"], fix=["--config"]),
    Case("evaluate-invalid-embedded-config", EVAL,
         setup=project_checkpoint("model.pt", config={"training": {"lr": "fast"}}),
         names=["{tmp}/model.pt", "training.lr", "fast"]),
    Case("evaluate-unknown-override", [*EVAL, "model.archh=dit"], setup=CKPT, names=["model.archh"],
         fix=["model.arch"]),
    Case("evaluate-missing-config-file", [*EVAL, "--config", "{tmp}/nope.yaml"], setup=CKPT,
         names=["{tmp}/nope.yaml"]),
    Case("evaluate-humanml3d-without-evaluator", EVAL, setup=HUMANML3D,
         names=["evaluation.evaluator_dir", "{tmp}/t2m"], fix=["finest.tar"]),
    Case("evaluate-samples-negative", [*EVAL, "--samples", "-5"], setup=CKPT, names=["--samples", "-5"],
         fix=[">= 1"]),
    Case("evaluate-samples-not-a-number", [*EVAL, "--samples", "all"], setup=CKPT, names=["--samples", "all"],
         fix=["whole number"]),
    Case("evaluate-samples-below-one-batch", [*EVAL, "--samples", "5"], setup=CKPT,
         names=["--samples 5", "evaluation.batch_size"], fix=["--samples 32 or more"]),
    Case("evaluate-replications-negative", [*EVAL, "--replications", "-1"], setup=CKPT,
         names=["--replications", "-1"], fix=[">= 1"]),
    Case("evaluate-steps-negative", [*EVAL, "--steps", "-3"], setup=CKPT, names=["--steps", "-3"], fix=[">= 1"]),
    Case("evaluate-steps-above-diffusion-steps", [*EVAL, "--steps", "5000"], setup=CKPT,
         names=["--steps 5000", "diffusion.steps = 100"], fix=["from 1 to 100"]),
    Case("evaluate-guidance-negative", [*EVAL, "--guidance", "-1"], setup=CKPT, names=["--guidance", "-1"],
         fix=[">= 0"]),
    Case("evaluate-eta-above-one", [*EVAL, "--eta", "2"], setup=CKPT, names=["--eta", "2"], fix=["from 0.0 to 1.0"]),
    Case("evaluate-split-bogus", [*EVAL, "--split", "bogus"], setup=CKPT, names=["--split", "bogus"],
         fix=["test", "val", "train"]),
    Case("evaluate-device-cuda-without-cuda", [*EVAL, "--device", "cuda"], setup=CKPT, names=["--device cuda"],
         fix=["--device cpu"]),
    Case("evaluate-device-bogus", [*EVAL, "--device", "gpu"], setup=CKPT, names=["--device gpu"], fix=["cpu"]),
    Case("evaluate-out-into-missing-folder", [*EVAL, "--out", "{tmp}/no/such/dir/r.json"], setup=CKPT,
         names=["{tmp}/no/such/dir"], fix=["create the folder"]),
    Case("evaluate-out-is-a-folder", [*EVAL, "--out", "{tmp}"], setup=CKPT, names=["{tmp}"], fix=["file name"]),

    # ---------------- train_ray.py: --resume-from and the rerun's last.pt, refused before data and Ray
    Case("resume-from-missing", [*TRAIN, "--resume-from", "{tmp}/w.pt"], names=["--resume-from", "{tmp}/w.pt"],
         fix=["does not exist"]),
    Case("resume-from-text-file", [*TRAIN, "--resume-from", "{tmp}/w.pt"], setup=write("w.pt", "not weights"),
         names=["--resume-from", "{tmp}/w.pt"], fix=["model_best.pt"]),
    Case("resume-from-a-list", [*TRAIN, "--resume-from", "{tmp}/w.pt"], setup=save("w.pt", [1, 2, 3]),
         names=["--resume-from", "{tmp}/w.pt", "list"], fix=["state_dict"]),
    Case("resume-from-no-state-dict", [*TRAIN, "--resume-from", "{tmp}/w.pt"], setup=save("w.pt", {"fid": 1.0}),
         names=["--resume-from", "{tmp}/w.pt", "'fid'"], fix=["state_dict"]),
    Case("resume-from-wrong-keys", [*TRAIN, "--resume-from", "{tmp}/w.pt"],
         setup=save("w.pt", {"encoder.weight": torch.ones(3)}), names=["--resume-from", "encoder.weight"],
         fix=["No key matched"]),
    Case("resume-from-wrong-shapes", [*TRAIN, "--resume-from", "{tmp}/w.pt"], setup=save("w.pt", other_shapes),
         names=["--resume-from", "model.latent_dim=16"], fix=["--partial"]),
    Case("resume-from-partial-nothing-fits", [*TRAIN, "--resume-from", "{tmp}/w.pt", "--partial"],
         setup=save("w.pt", {"encoder.weight": torch.ones(3)}), names=["--resume-from", "{tmp}/w.pt"],
         fix=["no key of the checkpoint fits"]),
    Case("partial-without-resume-from", [*TRAIN, "--partial"], names=["--partial"], fix=["--resume-from"]),
    Case("rerun-corrupt-last-pt", TRAIN, setup=write("outputs/CMDM-Demo/checkpoints/last.pt", "garbage"),
         names=[f"{RUN}/checkpoints/last.pt"], fix=["move it aside", "delete it yourself", "--name"]),
    Case("rerun-last-pt-not-a-trainer-checkpoint", TRAIN, setup=save("outputs/CMDM-Demo/checkpoints/last.pt", [1]),
         names=[f"{RUN}/checkpoints/last.pt"], fix=["move it aside", "--name"]),
    Case("rerun-last-pt-of-another-model", TRAIN,
         setup=save("outputs/CMDM-Demo/checkpoints/last.pt", last_pt_of_another_model),
         names=[f"{RUN}/checkpoints/last.pt", "model.latent_dim"], fix=["another --name"]),

    # ---------------- tune_ray.py
    Case("tune-no-arguments", ["tune_ray.py"], names=["sweep"], fix=["required"]),
    Case("export-not-a-sweep-folder", ["tune_ray.py", "export", "{tmp}"], names=["{tmp}", "sweep.json"],
         fix=["Sweep folder"]),
    Case("export-corrupt-sweep-json", ["tune_ray.py", "export", "{tmp}/sweep"], setup=sweep_folder("{not json"),
         names=["{tmp}/sweep/sweep.json"], fix=['"metric": "fid"', "--resume"]),
    Case("export-sweep-json-without-metric", ["tune_ray.py", "export", "{tmp}/sweep"],
         setup=sweep_folder('{"mode": "min"}'), names=["{tmp}/sweep/sweep.json", "metric"], fix=["fid, top1"]),
    Case("export-no-trial-evaluated", ["tune_ray.py", "export", "{tmp}/sweep"], setup=sweep_folder(trials=False),
         names=["{tmp}/sweep/trials"], fix=["nothing to export"]),
    Case("export-trial-without-config", ["tune_ray.py", "export", "{tmp}/sweep"], setup=sweep_folder(config=False),
         names=["{tmp}/sweep/trials/t1/config.yaml"], fix=["Nothing was exported"]),
    Case("export-out-into-missing-folder", ["tune_ray.py", "export", "{tmp}/sweep", "--out", "{tmp}/a/b"],
         setup=sweep_folder(), names=["{tmp}/a"], fix=["Create it first"]),
    Case("export-out-is-not-an-export", ["tune_ray.py", "export", "{tmp}/sweep", "--out", "{tmp}/mine"],
         setup=both(sweep_folder(), write("mine/notes.txt", "keep me")), names=["{tmp}/mine"],
         fix=["another --out"]),

    # ---------------- python -m cmdm.evaluation.fit
    Case("fit-epochs-zero", ["cmdm.evaluation.fit", "--data", "{tmp}", "--out", "{tmp}/ev", "--epochs", "0"],
         names=["--epochs", "0"], fix=[">= 1"]),
    Case("fit-batch-size-zero", ["cmdm.evaluation.fit", "--data", "{tmp}", "--out", "{tmp}/ev", "--batch-size", "0"],
         names=["--batch-size", "0"], fix=[">= 2"]),
    Case("fit-ae-epochs-negative", ["cmdm.evaluation.fit", "--data", "{tmp}", "--out", "{tmp}/ev",
                                    "--ae-epochs", "-1"], names=["--ae-epochs", "-1"], fix=[">= 0"]),
    Case("fit-lr-zero", ["cmdm.evaluation.fit", "--data", "{tmp}", "--out", "{tmp}/ev", "--lr", "0"],
         names=["--lr", "0"], fix=["> 0"]),
    Case("fit-data-missing", ["cmdm.evaluation.fit", "--data", "{tmp}/nope", "--out", "{tmp}/ev"],
         names=["--data {tmp}/nope"], fix=["HumanML3D layout"]),
    Case("fit-data-without-splits", ["cmdm.evaluation.fit", "--data", "{tmp}/d", "--out", "{tmp}/ev"],
         setup=write("d/readme.txt", "no data here"), names=["--data {tmp}/d", "Mean.npy"], fix=["HumanML3D"]),
    Case("fit-out-into-missing-folder", ["cmdm.evaluation.fit", "--data", "{tmp}", "--out", "{tmp}/a/b"],
         names=["--out {tmp}/a/b"], fix=["create it first"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    if case.id == "evaluate-device-cuda-without-cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check(case, tmp_path, monkeypatch)


def test_a_rerun_never_deletes_its_corrupt_last_pt(tmp_path, monkeypatch):
    """The corrupt last.pt is left byte for byte (the harness's snapshot covers it), and Ray never started."""
    import ray
    case = next(c for c in CASES if c.id == "rerun-corrupt-last-pt")
    check(case, tmp_path, monkeypatch)
    assert (tmp_path / "outputs/CMDM-Demo/checkpoints/last.pt").read_text() == "garbage"
    assert not ray.is_initialized()
    assert not (tmp_path / "data").exists()       # no data preparation either


def test_the_up_front_checks_pass_what_would_load(tmp_path):
    """The other side of the --resume-from rows: a checkpoint of the same model passes strictly, another
    architecture's passes with --partial (some keys fit), and a rerun's readable last.pt reports what changed."""
    from cmdm.config import config_to_dict
    from cmdm.run_files import RunFiles
    from cmdm.train import check_init_from, check_rerun
    cfg = tiny_cfg(tmp_path)
    torch.save({"model": tiny_model(cfg).state_dict(), "config": config_to_dict(cfg)}, tmp_path / "same.pt")
    torch.save(other_shapes(tmp_path), tmp_path / "other.pt")
    check_init_from(cfg, str(tmp_path / "same.pt"), partial=False)
    check_init_from(cfg, str(tmp_path / "other.pt"), partial=True)
    check_init_from(cfg, None, partial=False)
    files = RunFiles(tmp_path / "run")
    files.checkpoints.mkdir(parents=True)
    lr_cfg = tiny_cfg(tmp_path, "training.lr=1e-4")
    torch.save({"model": tiny_model(cfg).state_dict(), "step": 5, "config": config_to_dict(lr_cfg)}, files.last)
    assert check_rerun(cfg, files) == ["training.lr"]

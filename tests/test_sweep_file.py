"""Sweep files: what a good one resolves to, and the one-paragraph refusals of bad ones."""
from pathlib import Path

import pytest

from cmdm.tuning.space import Param
from cmdm.tuning.sweep_file import SweepError, load_sweep

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = f"""
name: s
base: {ROOT / 'configs' / 'demo.yaml'}
space:
  training.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
  task.train.batch_size: {{choice: [16, 32]}}
  model.num_heads: {{choice: [2, 4]}}           # int [2, 4] would draw 3, which does not divide latent_dim 64
metric: fid
mode: min
targets: {{fid: "<= 5", top1: ">= 0.2"}}
"""


def test_shipped_sweeps_load_and_hold_the_guides_targets():
    stable = load_sweep(ROOT / "sweeps" / "stable.yaml")
    assert {str(t) for t in stable.targets} == {"fid <= 0.25", "top1 >= 0.43", "top2 >= 0.64", "top3 >= 0.73"}
    assert stable.stop_on_targets and stable.priors and stable.doctor
    assert {"training.lr", "model.dropout", "training.weight_decay", "model.dit_drop_path"} <= set(stable.space)
    assert stable.space["training.lr"].kind == "loguniform" and stable.space["training.weight_decay"].kind == "loguniform"
    assert stable.base_point()["training.lr"] == 3e-5 and stable.base_config.ray.use_gpu
    demo = load_sweep(ROOT / "sweeps" / "demo.yaml")
    assert demo.base_config.data.name == "synthetic" and demo.targets


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_loads_with_a_space_targets_and_a_trial_config(path):
    sweep = load_sweep(path)
    assert sweep.space and sweep.targets and sweep.num_samples >= 1
    cfg = sweep.trial_config(sweep.base_point(), name="t0")        # the base point is a valid trial
    assert cfg.name == "t0" and all(sweep.space[k].contains(v) for k, v in sweep.base_point().items())


def test_symptom_sweep_starts_sick_and_its_remedies_stay_in_the_space():
    """bench/bench_sweep.py's sweep: the base lr oscillates (12x the demo's) and the guide's lr-down remedy is
    a point of the space, so the doctor can act on it."""
    from cmdm.tuning.doctor import RULES, apply_remedy
    sweep = load_sweep(ROOT / "sweeps" / "demo_symptoms.yaml")
    demo = load_sweep(ROOT / "sweeps" / "demo.yaml")
    assert sweep.base_point()["training.lr"] >= 10 * demo.base_point()["training.lr"]
    lr_down = next(r for r in RULES if r.name == "loss_oscillating")
    point = apply_remedy(sweep.base_point(), lr_down, sweep.space)
    assert point is not None and point["training.lr"] < sweep.base_point()["training.lr"]
    assert sweep.remedy == "continue" and sweep.priors


def test_good_sweep_resolves(tmp_path):
    s = load_sweep(write(tmp_path, GOOD), ["num_samples=5", "base.training.max_epochs=2", "resources.cpus_per_worker=2",
                                            "scheduler.grace_period=2"])
    assert s.num_samples == 5 and s.base_config.training.max_epochs == 2 and s.scheduler.grace_period == 2
    assert s.base_config.ray.cpus_per_worker == 2.0 and Path(s.output_root).is_absolute()
    assert Path(s.base_config.data.root).is_absolute()           # trials run in their own working directory
    cfg = s.trial_config({"training.lr": 1e-3, "task.train.batch_size": 16, "model.num_heads": 4}, name="t1")
    assert cfg.training.lr == 1e-3 and cfg.task.train.batch_size == 16 and cfg.name == "t1"
    assert s.targets_met({"fid": 4.0, "top1": 0.3}) and not s.targets_met({"fid": 4.0, "top1": 0.1})
    assert not s.targets_met({"fid": float("nan"), "top1": 0.3})


def test_param_clip_and_contains():
    lr = Param("training.lr", "loguniform", 1e-4, 1e-2)
    assert lr.clip(1.0) == 1e-2 and lr.clip(1e-6) == 1e-4 and lr.contains(1e-3) and not lr.contains(1.0)
    batch = Param("task.train.batch_size", "choice", values=(16, 32))
    assert batch.clip(8) == 16 and batch.clip(30) == 32 and batch.clip(32) == 32
    heads = Param("model.num_heads", "int", 2, 8)
    assert heads.clip(3.6) == 4 and isinstance(heads.clip(3.6), int)


@pytest.mark.parametrize("edit, words", [
    (("training.lr: {loguniform: [1.0e-4, 1.0e-2]}", "training.lr: {lognormal: [1.0e-4, 1.0e-2]}"), ["space.training.lr", "unknown kind"]),
    (("training.lr: {loguniform: [1.0e-4, 1.0e-2]}", "training.lr: {loguniform: [0, 1.0e-2]}"), ["loguniform", "low > 0"]),
    (("training.lr: {loguniform: [1.0e-4, 1.0e-2]}", "training.lr: {loguniform: [1.0e-2, 1.0e-4]}"), ["low < high"]),
    (("training.lr: {loguniform: [1.0e-4, 1.0e-2]}", "training.lrr: {loguniform: [1.0e-4, 1.0e-2]}"), ["training.lrr"]),
    (("model.num_heads: {choice: [2, 4]}", "model.num_heads: {choice: [0, 4]}"), ["model.num_heads"]),
    (("model.num_heads: {choice: [2, 4]}", "model.num_heads: {int: [2, 4]}"), ["model.num_heads", "latent_dim",
                                                                             "choice: [2, 4]"]),
    (("mode: min", "mode: lowest"), ["mode", "min"]),
    (("metric: fid", "metric: accuracy"), ["metric", "top1"]),
    (('fid: "<= 5"', 'fid: "about 5"'), ["targets.fid", "<= 0.25"]),
    (("name: s", "name: s\nnum_sample: 3"), ["num_sample", "not a sweep key"]),
    (("name: s", "name: s\ndoctor: [loss_plateau]"), ["doctor", "loss_plateau", "loss_not_decreasing"]),
    (("name: s", "name: s\ndoctor: maybe"), ["doctor", "true or false"]),
    (("name: s", "name: s\ndoctor: {remedy: sometimes}"), ["doctor.remedy", "sometimes", "continue, restart, off"]),
    (("name: s", "name: s\ndoctor: {remdy: restart}"), ["doctor.remdy", "Did you mean `remedy`"]),
    (("name: s", "name: s\ndoctor: {rules: [fid_rise]}"), ["doctor", "fid_rise", "fid_rising"]),
    (("name: s", "name: s\ndoctor: {remedy: continue, rules: []}"), ["doctor", "names no rule"]),
])
def test_bad_sweeps_are_refused_with_the_key_and_a_fix(tmp_path, edit, words):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(SweepError) as err:
        load_sweep(path)
    text = str(err.value)
    assert str(path) in text or "command line" in text
    for w in words:
        assert w in text, text


def test_missing_base_and_bad_override(tmp_path):
    with pytest.raises(SweepError, match="base"):
        load_sweep(write(tmp_path, GOOD.replace(str(ROOT / "configs" / "demo.yaml"), "nowhere.yaml")))
    with pytest.raises(SweepError, match="max_concurrent_trials"):
        load_sweep(write(tmp_path, GOOD), ["max_concurrent_trials=0"])
    with pytest.raises(SweepError, match="scheduler"):
        load_sweep(write(tmp_path, GOOD), ["scheduler.max_t=1"])


def test_tune_ray_cli_refuses_a_bad_file_with_exit_2(tmp_path):
    import subprocess
    import sys
    path = write(tmp_path, GOOD.replace("mode: min", "mode: lowest"))
    proc = subprocess.run([sys.executable, "tune_ray.py", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "mode" in proc.stderr


def test_stable_sweep_without_humanml3d_says_what_to_get_and_points_to_the_demo(tmp_path):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "tune_ray.py", "sweeps/stable.yaml", f"base.data.root={tmp_path / 'none'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "HumanML3D" in proc.stderr and "github.com/EricGuo5513/HumanML3D" in proc.stderr
    assert "sweeps/demo.yaml" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_can_be_limited_to_some_rules(tmp_path):
    s = load_sweep(write(tmp_path, GOOD + "doctor: [out_of_memory, gradient_explosion, fid_rising]\n"))
    assert s.doctor and s.doctor_rules == ("out_of_memory", "gradient_explosion", "fid_rising")
    assert load_sweep(write(tmp_path, GOOD)).doctor_rules is None          # default: every rule


@pytest.mark.parametrize("doctor, remedy, rules", [
    (None, "continue", None),                                  # the default: a remedy continues the trial's line
    ("true", "continue", None),
    ("false", "off", None),
    ("[fid_rising]", "continue", ("fid_rising",)),
    ("{remedy: restart}", "restart", None),
    ("{remedy: off}", "off", None),                            # YAML's bare off is false: read as "off"
    ("{remedy: continue, rules: [loss_oscillating, fid_rising]}", "continue", ("loss_oscillating", "fid_rising")),
])
def test_doctor_forms(tmp_path, doctor, remedy, rules):
    s = load_sweep(write(tmp_path, GOOD + (f"doctor: {doctor}\n" if doctor else "")))
    assert (s.remedy, s.doctor_rules, s.doctor) == (remedy, rules, remedy != "off")


def test_doctor_remedy_on_the_command_line_keeps_the_files_rules(tmp_path):
    s = load_sweep(write(tmp_path, GOOD + "doctor: [fid_rising]\n"), ["doctor.remedy=restart"])
    assert s.remedy == "restart" and s.doctor_rules == ("fid_rising",)
    assert load_sweep(write(tmp_path, GOOD), ["doctor=false"]).remedy == "off"

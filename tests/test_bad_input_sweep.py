"""Bad-input rows for sweep files, run names, resources and files built to exhaust memory (issue 11, items 4-5).

Rows that could eat the machine if a check regressed (nested aliases, a checkpoint of shared lists) run in a
subprocess with a memory and time limit, so a regression fails the test instead of hanging the machine.
"""
import resource
import subprocess
import sys

import pytest

from badinput import ROOT, Case, check, error_paragraph, snapshot
from cmdm.evaluation.metrics import LOWER_IS_BETTER

DEMO = "{root}/configs/demo.yaml"
SWEEP = """name: s
base: {root}/configs/demo.yaml
space:
  training.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
metric: fid
mode: min
"""


def sweep(text="", **replace):
    """A sweep file s.yaml in the row's folder: SWEEP with `replace` applied and `text` appended."""
    def setup(tmp):
        body = SWEEP.format(root=ROOT)
        for old, new in replace.items():
            body = body.replace(old.replace("_", " ") if old.startswith("mode") else old, new)
        (tmp / "s.yaml").write_text(body + text)
    return setup


def space(text):
    return sweep(space="space:\n" + text + "\n")


def with_space(lines):
    def setup(tmp):
        body = SWEEP.format(root=ROOT).replace("space:\n", "space:\n" + lines + "\n")
        (tmp / "s.yaml").write_text(body)
    return setup


def write(name, text):
    return lambda tmp: (tmp / name).write_text(text)


def replaced(old, new, extra=""):
    def setup(tmp):
        (tmp / "s.yaml").write_text(SWEEP.format(root=ROOT).replace(old, new) + extra)
    return setup


TUNE = ["tune_ray.py", "{tmp}/s.yaml"]
MODES = [Case(f"mode-wrong-for-{m}", TUNE, setup=replaced("metric: fid\nmode: min",
                                                          f"metric: {m}\nmode: {'max' if low else 'min'}"),
              names=["`mode`", m], fix=[f"mode: {'min' if low else 'max'}"])
         for m, low in LOWER_IS_BETTER.items()]

CASES = [
    # names that would put the run or sweep folder outside output_root
    Case("sweep-name-dotdot", TUNE, setup=replaced("name: s", "name: .."), names=["{tmp}/s.yaml", "`name`", "'..'"],
         fix=["folder name"]),
    Case("sweep-name-empty", TUNE, setup=replaced("name: s", "name: ''"), names=["`name`", "empty"], fix=["folder name"]),
    Case("sweep-name-absolute", TUNE, setup=replaced("name: s", "name: /tmp/elsewhere"),
         names=["`name`", "/tmp/elsewhere", "absolute"], fix=["output_root"]),
    Case("sweep-name-override-dotdot", TUNE + ["name=../../x"], setup=sweep(), names=["`name`", "../../x"],
         fix=["folder name"]),
    Case("train-name-dotdot", ["train_ray.py", DEMO, "--name", ".."], names=["name", "'..'"], fix=["--name"]),
    Case("train-name-empty", ["train_ray.py", DEMO, "--name", ""], names=["name", "empty"], fix=["--name"]),
    Case("train-name-absolute", ["train_ray.py", DEMO, "--name", "/tmp/elsewhere"], names=["name", "/tmp/elsewhere"],
         fix=["output_root"]),
    Case("config-name-override-escapes", ["cmdm.config", DEMO, "name=runs/../../x"], names=["name=runs/../../x", ".."],
         fix=["folder name"]),
    Case("config-file-name-absolute", ["cmdm.config", "{tmp}/c.yaml"], setup=write("c.yaml", "name: /etc\n"),
         names=["{tmp}/c.yaml", "name", "/etc"], fix=["output_root"]),
    # targets that can never or always be met
    Case("target-nan", TUNE, setup=sweep('targets: {fid: "<= nan"}\n'), names=["targets.fid", "nan"], fix=["finite"]),
    Case("target-inf", TUNE, setup=sweep('targets: {top1: ">= inf"}\n'), names=["targets.top1", "inf"], fix=["finite"]),
    Case("target-wrong-direction", TUNE, setup=sweep('targets: {fid: ">= 0.25"}\n'), names=["targets.fid", "lower"],
         fix=['fid: "<= 0.25"']),
    Case("target-top1-above-one", TUNE, setup=sweep('targets: {top1: ">= 43"}\n'), names=["targets.top1", "[0, 1]"],
         fix=["fraction"]),
    Case("target-unknown-metric", TUNE, setup=sweep('targets: {fdi: "<= 1"}\n'), names=["targets.fdi"], fix=["fid"]),
    # values inside the space that fail although its ends pass
    Case("space-int-heads-interior", TUNE, setup=with_space("  model.num_heads: {int: [2, 8]}"),
         names=["space.model.num_heads", "model.latent_dim", "3, 5, 6, 7"], fix=["{choice: [2, 4, 8]}"]),
    Case("space-choice-heads-interior", TUNE, setup=with_space("  model.num_heads: {choice: [2, 3, 4]}"),
         names=["space.model.num_heads", "model.latent_dim"], fix=["{choice: [2, 4]}"]),
    Case("space-int-latent-dim-interior", TUNE, setup=with_space("  model.latent_dim: {int: [62, 66]}"),
         names=["space.model.latent_dim", "model.num_heads"], fix=["{choice: [64]}"]),
    Case("space-pair-heads-latent", TUNE,
         setup=with_space("  model.num_heads: {choice: [8, 16]}\n  model.latent_dim: {choice: [64, 72]}"),
         names=["space.model.num_heads", "space.model.latent_dim", "model.num_heads=16", "model.latent_dim=72"],
         fix=["fit together"]),
    Case("space-int-latents-vs-contact", TUNE, setup=with_space("  model.condition_embedder.num_latents: {int: [0, 8]}"),
         names=["space.model.condition_embedder.num_latents"], fix=["choice: [1, 2"]),
    Case("space-uniform-on-int-key", TUNE, setup=with_space("  model.num_heads: {uniform: [2, 8]}"),
         names=["space.model.num_heads", "an integer"], fix=["narrow"]),
    Case("space-loguniform-on-int-key", TUNE, setup=with_space("  task.train.batch_size: {loguniform: [8, 64]}"),
         names=["space.task.train.batch_size", "an integer"], fix=["narrow"]),
    Case("space-uniform-interior-dropout", TUNE, setup=with_space("  model.dropout: {uniform: [0.5, 1.0]}"),
         names=["space.model.dropout", "[0, 1)"], fix=["narrow"]),
    Case("space-on-name", TUNE, setup=with_space("  name: {choice: [a, b]}"), names=["space.name"], fix=["remove"]),
    Case("space-kind-typo", TUNE, setup=with_space("  model.dropout: {unifrom: [0.1, 0.2]}"),
         names=["space.model.dropout", "unifrom"], fix=["uniform"]),
    # keys a sweep file does not have, or that it would silently replace
    Case("sweep-key-doctor-rules", TUNE, setup=sweep("doctor_rules: [fid_rising]\n"), names=["doctor_rules"],
         fix=["doctor"]),
    Case("sweep-nested-scheduler-gracee", TUNE, setup=sweep("scheduler: {gracee: 2}\n"), names=["scheduler.gracee"],
         fix=["grace_period"]),
    Case("sweep-nested-resources-typo", TUNE + ["resources.num_worker=2"], setup=sweep(),
         names=["resources.num_worker"], fix=["num_workers"]),
    Case("sweep-overrides-ray-replaced", TUNE, setup=sweep("overrides: {ray.num_workers: 2}\n"),
         names=["overrides.ray.num_workers"], fix=["resources.num_workers"]),
    Case("sweep-overrides-not-a-mapping", TUNE, setup=sweep("overrides: [1, 2]\n"), names=["`overrides`"],
         fix=["training.max_epochs"]),
    Case("sweep-targets-not-a-mapping", TUNE, setup=sweep("targets: [fid]\n"), names=["`targets`"], fix=["<= 0.25"]),
    # resources no trial or run could ever get on this machine (a local Ray): refused before data or Ray start
    Case("sweep-num-workers-64", TUNE + ["resources.num_workers=64"], setup=sweep(),
         names=["resources.num_workers", "64 CPUs", "CPUs and"], fix=["resources.num_workers=1"]),
    Case("sweep-cpus-per-worker-64", TUNE + ["resources.cpus_per_worker=64"], setup=sweep(),
         names=["resources.cpus_per_worker", "64 CPUs"], fix=["num_workers x cpus_per_worker"]),
    Case("sweep-gpus-per-worker-64", TUNE + ["resources.use_gpu=true", "resources.gpus_per_worker=64"], setup=sweep(),
         names=["resources.use_gpu", "64 GPUs"], fix=["use_gpu=false"]),
    Case("train-num-workers-64", ["train_ray.py", DEMO, "ray.num_workers=64", "output_root={tmp}/out"],
         names=["ray.num_workers", "128 CPUs"], fix=["ray.num_workers=1"]),
    Case("train-cpus-per-worker-64", ["train_ray.py", DEMO, "ray.cpus_per_worker=64", "output_root={tmp}/out"],
         names=["ray.cpus_per_worker", "64 CPUs"], fix=["ray.cpus_per_worker=1"]),
    Case("config-deep-nesting", ["cmdm.config", "{tmp}/c.yaml"], setup=write("c.yaml", "training: " + "[" * 400 + "]" * 400),
         names=["{tmp}/c.yaml", "nested more than"], fix=["plainly"]),
    Case("config-huge-integer", ["cmdm.config", "{tmp}/c.yaml"], setup=write("c.yaml", "seed: " + "9" * 5000 + "\n"),
         names=["{tmp}/c.yaml"], fix=["sensible"]),
] + MODES


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)


# --------------------------------------------------------------------------------------------
# Files that explode when walked or printed: run in a subprocess under a memory and time limit
# --------------------------------------------------------------------------------------------

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))     # 3 GiB: torch alone needs ~1.5


def run_limited(argv, tmp, names=(), fix=()):
    """`python argv...` in tmp with 3 GiB and 120 s; asserts the bad-input standard on its output."""
    before = snapshot(tmp)
    proc = subprocess.run([sys.executable, *argv], cwd=tmp, capture_output=True, text=True, timeout=120,
                          preexec_fn=_limits, env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    text = proc.stdout + proc.stderr
    message = error_paragraph(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in text, text[-3000:]
    assert message and "\n\n" not in message and len(message) < 2000, message[:3000]
    for word in (*names, *fix):
        assert word.lower() in message.lower(), message
    assert snapshot(tmp) == before
    return message


def test_billion_laughs_config_is_refused_while_loading(tmp_path):
    (tmp_path / "c.yaml").write_text(LAUGHS + "training: {lr: *i}\n")
    assert len((tmp_path / "c.yaml").read_bytes()) < 600
    run_limited([str(ROOT / "cmdm" / "config.py"), str(tmp_path / "c.yaml")], tmp_path,
                names=[str(tmp_path / "c.yaml"), "aliases"], fix=["plainly"])


def test_billion_laughs_sweep_file_is_refused_while_loading(tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP.format(root=ROOT) + LAUGHS + "x: *i\n")
    run_limited([str(ROOT / "tune_ray.py"), str(tmp_path / "s.yaml")], tmp_path,
                names=[str(tmp_path / "s.yaml"), "aliases"], fix=["plainly"])


def test_billion_laughs_override_value_prints_a_bounded_message(tmp_path):
    value = "[" + ", ".join(["&a [1, 2, 3, 4, 5, 6, 7, 8]"] + [f"&{b} [" + ", ".join([f"*{a}"] * 8) + "]"
                                                              for a, b in zip("abcdefg", "bcdefgh")]) + ", *h]"
    run_limited([str(ROOT / "cmdm" / "config.py"), str(ROOT / "configs" / "demo.yaml"), f"model.num_layers={value}"],
                tmp_path, names=["model.num_layers"])


def test_checkpoint_with_shared_nested_lists_prints_a_bounded_message(tmp_path):
    import torch
    nested = [1]
    for _ in range(40):                                  # 2**40 leaves when expanded; a few hundred bytes pickled
        nested = [nested, nested]
    ckpt = tmp_path / "tiny.pt"
    torch.save({"config": {"model": {"num_layers": nested}}, "model": {"w": torch.zeros(1)}}, ckpt)
    assert ckpt.stat().st_size < 4000
    run_limited(["-m", "cmdm.evaluate", str(ckpt)], tmp_path, names=[str(ckpt), "model.num_layers"],
                fix=["list of integers"])

"""Bad-input rows for config files and overrides (the cases the config already refused before this suite)."""
import pytest

from badinput import Case, check

DEMO = "{root}/configs/demo.yaml"


def write(name, text):
    return lambda tmp: (tmp / name).write_text(text)


CASES = [
    Case("config-missing-file", ["cmdm.config", "{tmp}/nope.yaml"], names=["{tmp}/nope.yaml"], fix=["configs/"]),
    Case("config-unknown-key", ["cmdm.config", "{tmp}/c.yaml"], setup=write("c.yaml", "training:\n  lrr: 1e-4\n"),
         names=["training.lrr"], fix=["training.lr"]),
    Case("config-bad-type", ["cmdm.config", "{tmp}/c.yaml"], setup=write("c.yaml", "training:\n  lr: fast\n"),
         names=["training.lr", "fast"]),
    Case("config-python-tag", ["cmdm.config", "{tmp}/c.yaml"],
         setup=write("c.yaml", "training: !!python/object/apply:os.system ['true']\n"), names=["{tmp}/c.yaml"]),
    Case("config-duplicate-key", ["cmdm.config", "{tmp}/c.yaml"],
         setup=write("c.yaml", "training:\n  lr: 1e-4\n  lr: 2e-4\n"), names=["lr"]),
    Case("config-not-a-mapping", ["cmdm.config", "{tmp}/c.yaml"], setup=write("c.yaml", "- 1\n- 2\n"),
         names=["{tmp}/c.yaml"], fix=["section"]),
    Case("override-unknown-key", ["cmdm.config", DEMO, "model.archh=dit"], names=["model.archh"], fix=["model.arch"]),
    Case("override-no-equals", ["cmdm.config", DEMO, "training.lr"], names=["training.lr"]),
    Case("override-negative-lr", ["cmdm.config", DEMO, "training.lr=-1"], names=["training.lr"]),
    Case("override-bad-choice", ["cmdm.config", DEMO, "model.arch=unet"], names=["model.arch", "unet"]),
    Case("train-unknown-key", ["train_ray.py", DEMO, "training.lrr=1"], names=["training.lrr"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)


def test_the_harness_fails_a_row_that_does_not_name_its_key(tmp_path, monkeypatch):
    """The suite can fail: a row asking for a name the message lacks, or a wrong exit code, is an error."""
    with pytest.raises(AssertionError, match="does not name"):
        check(Case("x", ["cmdm.config", DEMO, "training.lrr=1"], names=["model.nothing"]), tmp_path, monkeypatch)
    with pytest.raises(AssertionError, match="exit code"):
        check(Case("y", ["cmdm.config", DEMO]), tmp_path, monkeypatch)

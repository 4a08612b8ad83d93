"""Bad-input rows for the local Ray's settings: refused before any data is prepared or Ray is started."""
import pytest

from badinput import Case, check

DEMO = "{root}/configs/demo.yaml"
SWEEP = "{root}/sweeps/demo.yaml"
NO_RAY_TOKEN = {"RAY_AUTH_TOKEN": ""}      # a token the developer's shell may hold must not hide the mistake

CASES = [
    Case("ray-token-path-missing-train", ["train_ray.py", DEMO, "output_root={tmp}/outputs"],
         env={"RAY_AUTH_TOKEN_PATH": "{tmp}/no_token", **NO_RAY_TOKEN},
         names=["RAY_AUTH_TOKEN_PATH", "{tmp}/no_token"], fix=["ray get-auth-token", "unset"]),
    Case("ray-token-path-empty-sweep", ["tune_ray.py", SWEEP, "output_root={tmp}/outputs"],
         setup=lambda tmp: (tmp / "token").write_text(""),
         env={"RAY_AUTH_TOKEN_PATH": "{tmp}/token", **NO_RAY_TOKEN},
         names=["RAY_AUTH_TOKEN_PATH", "{tmp}/token"], fix=["ray get-auth-token", "unset"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)

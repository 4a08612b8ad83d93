"""Bad-input rows for the evaluator sanity table (`python -m cmdm.evaluation.sanity`)."""
import pytest

from badinput import Case, check


def make_dirs(*names):
    return lambda tmp: [(tmp / n).mkdir() for n in names]


CASES = [
    Case("sanity-missing-evaluator", ["cmdm.evaluation.sanity", "--evaluator", "{tmp}/evaluator", "--data", "{tmp}/data"],
         setup=make_dirs("data"), names=["{tmp}/evaluator/evaluator.pt"], fix=["python -m cmdm.evaluation.fit"]),
    Case("sanity-missing-data", ["cmdm.evaluation.sanity", "--evaluator", "{tmp}/evaluator", "--data", "{tmp}/nodata"],
         setup=make_dirs("evaluator"), names=["{tmp}/nodata"], fix=["python -m cmdm.data.synthetic"]),
    Case("sanity-no-paths", ["cmdm.evaluation.sanity"], names=["--evaluator", "--data"], fix=["--config"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)

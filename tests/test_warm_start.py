"""warm_start: the finished trials of earlier sweeps are the study's first observations, so TPE's first
proposals start where the earlier sweep ended; the key's bad inputs are refused at load. No training, no Ray."""
import json
import math
import statistics

import pytest
import yaml

from badinput import ROOT, Case, check
from cmdm.tuning.search import build_searcher
from cmdm.tuning.sweep_file import load_sweep

GOOD_LR = 1e-4


def earlier_sweep(folder, rows, metric="fid"):
    """A sweep folder as tune_ray.py leaves it, reduced to what warm_start reads: sweep.json, summary.json."""
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"name": folder.name, "metric": metric, "mode": "min"}))
    (folder / "summary.json").write_text(json.dumps({"sweep": folder.name, "metric": metric, "mode": "min",
                                                     "trials": rows}))


def row(trial_id, lr, fid, end="finished", **params):
    return {"trial_id": trial_id, "params": {"training.lr": lr, **params}, "end": end,
            "best": None if fid is None else {"fid": fid, "top1": 0.1}}


def clear_best_region(n=20):
    """lr spread over [1e-5, 1e-2]: the closer to 1e-4 (in log), the lower the FID."""
    lrs = [10 ** (-5 + 3 * i / (n - 1)) for i in range(n)]
    return [row(f"old{i}", lr, 1.0 + 10 * (math.log10(lr) - math.log10(GOOD_LR)) ** 2) for i, lr in enumerate(lrs)]


def new_sweep(tmp_path, warm_start=None, space=None, priors=False, name="new"):
    spec = {"name": name, "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(tmp_path / "outputs"),
            "space": space or {"training.lr": {"loguniform": [1e-5, 1e-2]}}, "metric": "fid", "mode": "min",
            "priors": priors, "num_samples": 20, "seed": 0}
    if warm_start is not None:
        spec["warm_start"] = warm_start
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_sweep(path)


def first_proposals(sweep, n=5):
    notes = []
    searcher, priors = build_searcher(sweep, storage_url=None, log=notes.append)
    return [searcher.suggest(f"t{i}") for i in range(n)], notes, searcher, priors


def test_tpe_first_proposals_move_toward_the_earlier_sweeps_best_region(tmp_path):
    old = tmp_path / "outputs" / "old"
    earlier_sweep(old, clear_best_region())
    cold, _, _, _ = first_proposals(new_sweep(tmp_path))
    warm, notes, searcher, _ = first_proposals(new_sweep(tmp_path, warm_start=[str(old)]))

    def distance(points):      # median |log lr - log 1e-4| of the proposals
        return statistics.median(abs(math.log(p["training.lr"] / GOOD_LR)) for p in points)

    assert distance(warm) < 0.5 * distance(cold), (distance(warm), distance(cold))
    assert distance(warm) < math.log(3)          # within a factor 3 of the earlier best lr
    assert notes == [f"Warm start from {old}: 20 finished trial(s) added to the study."]
    added = [t for t in searcher._ot_study.trials if t.user_attrs.get("warm_start")]
    assert len(added) == 20 and added[0].user_attrs["warm_start"] == f"{old}/old0"
    # deterministic: the same seed and the same earlier sweep give the same proposals
    again, _, _, _ = first_proposals(new_sweep(tmp_path, warm_start=[str(old)]))
    assert again == warm


def test_trials_outside_the_space_are_left_out_with_a_note(tmp_path):
    old = tmp_path / "outputs" / "old"
    earlier_sweep(old, [row("a", 1e-4, 2.0), row("b", 0.05, 1.0),                 # lr outside [1e-5, 1e-2]
                        row("c", 1e-3, 3.0, **{"model.num_layers": 4}),          # a key this sweep does not search
                        row("d", 1e-3, None), row("e", 1e-3, 0.5, end="failed"),  # no evaluation, failed
                        row("f", 2e-4, 2.5, **{"model.dropout": 0.1})])           # a subset of this space: taken
    space = {"training.lr": {"loguniform": [1e-5, 1e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}}
    _, notes, searcher, _ = first_proposals(new_sweep(tmp_path, warm_start=[str(old)], space=space), n=1)
    assert len(notes) == 1
    note = notes[0]
    assert note.startswith(f"Warm start from {old}: 2 finished trial(s) added to the study")
    assert "2 without an evaluation (or failed) left out" in note
    assert "b: training.lr=0.05 is outside loguniform [1e-05, 0.01]" in note
    assert "c: it searched model.num_layers, which this sweep does not" in note
    added = {t.user_attrs["warm_start"]: t for t in searcher._ot_study.trials if t.user_attrs.get("warm_start")}
    assert set(added) == {f"{old}/a", f"{old}/f"}
    assert added[f"{old}/a"].params == {"training.lr": 1e-4} and added[f"{old}/a"].value == 2.0
    assert added[f"{old}/f"].params == {"training.lr": 2e-4, "model.dropout": 0.1}


def test_priors_the_earlier_sweep_ran_are_not_run_again(tmp_path):
    first = new_sweep(tmp_path, priors=True, name="first")
    _, _, _, priors = first_proposals(first, n=1)
    assert [name for name, _ in priors] == ["stable", "lr_down", "lr_up"]
    old = tmp_path / "outputs" / "old"
    earlier_sweep(old, [row("p0", priors[0][1]["training.lr"], 3.0), row("p1", priors[1][1]["training.lr"], 4.0)])
    notes = []
    searcher, second = build_searcher(new_sweep(tmp_path, warm_start=[str(old)], priors=True), None, log=notes.append)
    assert [name for name, _ in second] == ["lr_up"]
    assert "Priors an earlier sweep already ran, not run again: stable, lr_down." in notes
    assert searcher.suggest("t0") == second[0][1]               # the remaining prior runs first


# --------------------------------------------------------------------------------------------
# Bad input: one paragraph naming the file, the key and the fix (tests/test_bad_input_sweep.py's standard)
# --------------------------------------------------------------------------------------------

SWEEP = f"""name: s
base: {ROOT}/configs/demo.yaml
space:
  training.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
metric: fid
mode: min
"""


def setup(warm_start, make=None):
    def write(tmp):
        if make:
            make(tmp)
        (tmp / "s.yaml").write_text(SWEEP + f"warm_start: {warm_start}\n")
    return write


def folder(name, sweep_json=True, summary=None):
    def make(tmp):
        d = tmp / "outputs" / name
        d.mkdir(parents=True)
        if sweep_json:
            (d / "sweep.json").write_text("{}")
        if summary is not None:
            (d / "summary.json").write_text(summary)
    return make


TUNE = ["tune_ray.py", "{tmp}/s.yaml"]
CASES = [
    Case("warm-start-not-a-list", TUNE, setup=setup("outputs/old"), names=["{tmp}/s.yaml", "`warm_start`", "'outputs/old'"],
         fix=["warm_start: [outputs/"]),
    Case("warm-start-missing-folder", TUNE, setup=setup("[outputs/nope]"),
         names=["`warm_start`", "outputs/nope", "{tmp}/outputs/nope", "not a folder"],
         fix=["earlier sweep", "working directory"]),
    Case("warm-start-not-a-sweep", TUNE, setup=setup("[outputs/old]", folder("old", sweep_json=False)),
         names=["`warm_start`", "outputs/old", "no sweep.json"], fix=["<output_root>/<its name>"]),
    Case("warm-start-unfinished", TUNE, setup=setup("[outputs/old]", folder("old")),
         names=["`warm_start`", "outputs/old", "not finished", "summary.json"], fix=["--resume", "remove it"]),
    Case("warm-start-broken-summary", TUNE, setup=setup("[outputs/old]", folder("old", summary="{not json")),
         names=["`warm_start`", "summary.json", "not a sweep summary"], fix=["remove it"]),
    Case("warm-start-other-metric", TUNE,
         setup=setup("[outputs/old]", folder("old", summary='{"metric": "top1", "trials": []}')),
         names=["`warm_start`", "'top1'", "fid"], fix=["metric: fid"]),
    Case("warm-start-own-folder", TUNE, setup=setup("[outputs/s]", folder("s")),
         names=["`warm_start`", "own folder"], fix=["--resume"]),
    Case("warm-start-twice", TUNE,
         setup=setup("[outputs/old, ./outputs/old]", folder("old", summary='{"metric": "fid", "trials": []}')),
         names=["`warm_start`", "twice"], fix=["once"]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case, tmp_path, monkeypatch):
    check(case, tmp_path, monkeypatch)

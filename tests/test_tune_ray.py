"""tune_ray.py end to end on a local Ray (tiny model, tiny data): the rule priors run first, the summary, the
Optuna study, the report and the export; a crashing trial does not stop the sweep; an interrupted sweep resumes.
The searcher's remedy path is checked without Ray: a diagnosed trial makes the next suggestion its remedy.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(tiny, tmp_path, name, space=None, base_extra=None, **top) -> Path:
    base = {k: (str(v) if isinstance(v, Path) else v) for k, v in tiny_config(tiny, **(base_extra or {})).items()
            if k != "output_root" and not k.startswith("ray.")}   # resources: sets ray.*
    base["model.num_layers"] = [1, 1]
    doc = {"name": name, "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(tmp_path / "outputs"),
           "overrides": base,
           "space": space or {"training.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}},
           "num_samples": 3, "max_concurrent_trials": 1, "resources": {"num_workers": 1, "cpus_per_worker": 1},
           "scheduler": {"time_attr": "evaluations", "grace_period": 1, "reduction_factor": 2, "max_t": 4},
           "metric": "fid", "mode": "min", "targets": {"fid": "<= 0.001"}, "seed": 0}
    doc.update(top)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tune(path, *args, env=None, timeout=600):
    return subprocess.run([sys.executable, "tune_ray.py", str(path), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def swept(tiny, tmp_path_factory):
    """The tiny sweep, with every TCP socket its process tree (the driver, Ray's servers, the trials' Train
    workers) listened on while it ran."""
    from types import SimpleNamespace

    from listening import listening_sockets, process_tree
    tmp = tmp_path_factory.mktemp("sweep")
    path = sweep_file(tiny, tmp, "tiny-sweep", max_concurrent_trials=2)   # two at a time, as the demo sweep runs
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    with open(out, "w") as fo, open(err, "w") as fe:
        popen = subprocess.Popen([sys.executable, "tune_ray.py", str(path)], cwd=ROOT, stdout=fo, stderr=fe, text=True)
        sockets, deadline = set(), time.time() + 600
        while popen.poll() is None and time.time() < deadline:
            sockets |= listening_sockets(process_tree(popen.pid))
            time.sleep(0.3)
        if popen.poll() is None:
            popen.kill()
        popen.wait()
    proc = SimpleNamespace(returncode=popen.returncode, stdout=out.read_text(), stderr=err.read_text(), sockets=sockets)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return tmp / "outputs" / "tiny-sweep", proc


def test_a_local_ray_listens_on_loopback_only(swept):
    """Ray's GCS, raylet, workers, dashboard, dashboard agent (job API), runtime-env agent and metrics ports
    bind to 127.0.0.1. The one documented exception (README, "Network"): torch.distributed's TCPStore, which
    rank 0 of a trial's Train workers serves on the wildcard address (torch has no setting for it)."""
    from listening import not_loopback
    _, proc = swept
    names = {name for name, _, _ in proc.sockets}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::Dashboard") for n in names), names
    outside = not_loopback(proc.sockets)
    # Ray's servers bind 127.0.0.1 itself; the TCPStore binds the wildcard address, one port per trial (its
    # process may still be named ray::IDLE when sampled, so the port is not told apart by the process name)
    assert all(address in ("::", "0.0.0.0") for _, _, address in outside), outside
    assert not [s for s in outside if s[0] in ("gcs_server", "raylet") or s[0].startswith(("ray::Dashboard",
                                                                                           "ray::RuntimeEnv"))]
    assert len({port for _, port, _ in outside}) <= 3, outside          # 3 trials


def test_priors_run_first_and_the_summary_is_sorted(swept):
    d, proc = swept
    assert "Ray dashboard: http://127.0.0.1:" in proc.stdout
    assert "Warm start" in proc.stdout and "diagnosis" in proc.stdout          # the live table has the column
    summary = json.loads((d / "summary.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 3
    # demo.yaml's lr and dropout, then the guide's lr rules (x2/3, x5/3): the first three points
    from cmdm.config import load_config
    base = load_config(str(ROOT / "configs" / "demo.yaml"))
    lrs = sorted(t["params"]["training.lr"] for t in trials)
    assert lrs == pytest.approx([base.training.lr * 2 / 3, base.training.lr, base.training.lr * 5 / 3], rel=1e-3)
    assert all(t["params"]["model.dropout"] == base.model.dropout for t in trials)
    fids = [t["best"]["fid"] for t in trials if t["best"]]
    assert fids == sorted(fids) and summary["best_trial"] == trials[0]["trial_id"]
    best_json = json.loads((Path(trials[0]["run_dir"]) / "checkpoints" / "best_metrics.json").read_text())
    assert best_json["fid"] == pytest.approx(trials[0]["best"]["fid"])
    assert "| trial |" in (d / "summary.md").read_text() and "Best trial:" in proc.stdout


def test_study_report_and_tensorboard_files(swept):
    import optuna
    d, _ = swept
    study = optuna.load_study(study_name="tiny-sweep", storage=f"sqlite:///{d / 'optuna.db'}")
    ran = [t for t in study.trials if t.state.is_finished()]          # the 4th prior is still queued (WAITING)
    assert len(ran) == 3 and all("training.lr" in t.params and t.value is not None for t in ran)
    for name in ("curves.png", "params_vs_fid.png", "best_trial/sample_0.gif"):
        assert (d / "report" / name).stat().st_size > 1000, name
    for run in (d / "trials").iterdir():
        assert list((run / "logs").glob("events.out.tfevents*")) and (run / "config.yaml").is_file()
        # the trials' workers took the clips the sweep read once, not their own copy of every file
        assert "the sweep's copy in Ray's object store" in (run / "logs" / "runtime.log").read_text(), run
    assert (d / "sweep.yaml").is_file() and json.loads((d / "sweep.json").read_text())["metric"] == "fid"


def test_a_resumed_asha_rebuilds_its_rungs_from_the_trials_histories(swept):
    """Ray does not save the scheduler with the experiment: the ASHA a resumed sweep gets has empty rungs. Given
    the tiny sweep's real trials as Tune restores them (finished trials added again), ResumableASHA's rungs,
    rebuilt from each trial's runtime.log, equal those of a plain ASHA that saw Tune's reports live (to the log's
    4 decimals), and a new trial worse than every recorded one at the first rung is stopped there (a plain
    restored ASHA lets it go on)."""
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from cmdm.tuning.run import ResumableASHA
    d, _ = swept
    args = dict(time_attr="evaluations", metric="best_fid", mode="min", grace_period=1, reduction_factor=2, max_t=5)
    results = [json.loads(line) for f in sorted((d / "tune").glob("trial_driver_*"))
               for line in (f / "result.json").read_text().splitlines()]
    trials = {r["trial_id"]: SimpleNamespace(trial_id=r["trial_id"], status="TERMINATED") for r in results}
    assert len(trials) == 3
    live = ASHAScheduler(**args)          # the reports in the order they arrived
    for t in trials.values():
        live.on_trial_add(None, t)
    for r in sorted(results, key=lambda r: r["timestamp"]):
        live.on_trial_result(None, trials[r["trial_id"]], r)
    restored_plain, rebuilt = ASHAScheduler(**args), ResumableASHA(sweep_dir=d, base_metric="fid", **args)
    for t in trials.values():
        restored_plain.on_trial_add(None, t)
        rebuilt.on_trial_add(None, t)
    recorded = [{m: dict(r) for m, r in b._rungs} for b in live._brackets]
    assert len(recorded[0][1]) == 3                                      # every trial reached rung 1
    again = [{m: dict(r) for m, r in b._rungs} for b in rebuilt._brackets]
    assert [{m: sorted(r) for m, r in b.items()} for b in again] == [{m: sorted(r) for m, r in b.items()}
                                                                      for b in recorded]
    for b_again, b_live in zip(again, recorded):
        for m in b_live:
            assert b_again[m] == pytest.approx(b_live[m], abs=1e-4)
    assert all(not r for b in restored_plain._brackets for _, r in b._rungs)     # what Ray's restore gives
    assert rebuilt.replayed == {t: max(r["epoch"] for r in results if r["trial_id"] == t) for t in trials}
    assert not rebuilt._trial_info                                     # finished trials report nothing more
    worst = max(-v for v in recorded[0][1].values())                   # rung values are stored as -fid (mode min)
    new = SimpleNamespace(trial_id="new", status="PENDING")
    result = {"evaluations": 1, "best_fid": worst + 1.0}
    for sched, action in ((rebuilt, TrialScheduler.STOP), (restored_plain, TrialScheduler.CONTINUE)):
        sched.on_trial_add(None, new)
        assert sched.on_trial_result(None, new, result) == action
    assert rebuilt.rungs()[0][1]["new"] == pytest.approx(worst + 1.0)


def test_export_loads_in_evaluate_and_as_resume_from(swept, tmp_path):
    d, _ = swept
    out = tmp_path / "best"
    proc = subprocess.run([sys.executable, "tune_ray.py", "export", str(d), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} >= {"model_best.pt", "best_metrics.json", "config.yaml"}
    summary = json.loads((d / "summary.json").read_text())
    assert json.loads((out / "best_metrics.json").read_text())["fid"] == pytest.approx(summary["trials"][0]["best"]["fid"])
    ev = subprocess.run([sys.executable, "-m", "cmdm.evaluate", str(out / "model_best.pt"), "--samples", "32",
                         "--steps", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and "fid" in ev.stdout, ev.stdout[-2000:] + ev.stderr[-2000:]
    # what train_ray.py --resume-from does with it: the exported config builds the model, the weights load strictly
    from cmdm.config import load_config
    from cmdm.model import build_model, load_model_weights
    cfg = load_config(str(out / "config.yaml"))
    report = load_model_weights(build_model(cfg, load_text_encoder=False), str(out / "model_best.pt"), strict=True,
                                verbose=False)
    assert report.details()
    bad = subprocess.run([sys.executable, "tune_ray.py", "export", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "not a sweep folder" in bad.stderr


def test_crashing_trials_do_not_stop_the_sweep_and_are_diagnosed(tiny, tmp_path):
    path = sweep_file(tiny, tmp_path, "oom-sweep", num_samples=2, priors=False,
                      space={"task.train.batch_size": {"choice": [8, 16]}, "training.lr": {"loguniform": [1e-4, 1e-2]}})
    proc = tune(path, env={"CMDM_INJECT_FAILURE_AT_STEP": "0",
                           "CMDM_INJECT_FAILURE_MESSAGE": "CUDA out of memory. Tried to allocate 2.00 GiB"})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]   # no trial reached an evaluation
    summary = json.loads((tmp_path / "outputs" / "oom-sweep" / "summary.json").read_text())
    assert len(summary["trials"]) == 2
    for t in summary["trials"]:
        assert t["end"] == "failed" and t["diagnosis"] == ["out_of_memory"] and "out of memory" in t["error"]
        assert t["trial_seconds"] > 0            # the driver's clock counts a trial that never finished an epoch
    md = (tmp_path / "outputs" / "oom-sweep" / "summary.md").read_text()
    assert md.count(": out_of_memory: batch too large -> task.train.batch_size x0.5") == 2   # one line per trial
    # the guide's remedy (batch x0.5) reached the searcher: the second trial is the first one at batch 8
    remedy = json.loads((tmp_path / "outputs" / "oom-sweep" / "remedies.jsonl").read_text().splitlines()[0])
    first, second = sorted(summary["trials"], key=lambda t: t["run_dir"] != remedy["trial_id"] and
                           not t["run_dir"].endswith(remedy["trial_id"]))
    assert remedy["rule"] == "out_of_memory" and remedy["from"]["task.train.batch_size"] == 16
    assert second["params"] == remedy["point"] and remedy["point"]["task.train.batch_size"] == 8


def test_a_diagnosed_trial_is_continued_from_its_checkpoint(tiny, tmp_path):
    """doctor {remedy: continue} end to end: at lr ~1e-8 the loss stays flat, so after its 3rd epoch the first
    trial is diagnosed loss_not_decreasing; the sweep stops it and the second trial continues its line from its
    last.pt with lr x5/3: it trains only the epoch left, from the parent's step, and says so in its runtime.log;
    the summary and the report show the lineage."""
    path = sweep_file(tiny, tmp_path, "fork-sweep", base_extra={"training.max_epochs": 4}, num_samples=2,
                      priors=False, max_remedies=1, space={"training.lr": {"loguniform": [1e-9, 1e-7]}},
                      doctor={"remedy": "continue", "rules": ["loss_not_decreasing"]},
                      scheduler={"time_attr": "evaluations", "grace_period": 3, "reduction_factor": 2, "max_t": 4})
    proc = tune(path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    d = tmp_path / "outputs" / "fork-sweep"
    summary = json.loads((d / "summary.json").read_text())
    child = next(t for t in summary["trials"] if t.get("parent"))
    parent = next(t for t in summary["trials"] if t["trial_id"] == child["parent"])
    step = child["forked_at_step"]
    assert step % 16 == 0 and 3 * 16 <= step < 4 * 16                    # its last.pt after epoch 3
    assert parent["end"] == f"stopped: continued in {child['trial_id']}"
    assert child["remedy"].startswith("loss_not_decreasing: lr ") and "(from its last.pt, epoch 3)" in child["remedy"]
    assert child["params"]["training.lr"] == pytest.approx(parent["params"]["training.lr"] * 5 / 3, rel=1e-3)
    log = Path(child["run_dir"], "logs", "runtime.log").read_text().splitlines()
    assert log[0].endswith(f"Forked from trial {parent['trial_id']} at step {step} (epoch 3, its last checkpoint, "
                           f"last.pt) with remedy loss_not_decreasing: lr {parent['params']['training.lr']:.3g} -> "
                           f"{child['params']['training.lr']:.3g}")
    assert any(f"Continued trial {parent['trial_id']}'s line" in line for line in log)
    first_step = int(re.search(r"Step:\s+(\d+)", next(line for line in log if "[TRAIN]" in line))[1])
    assert step < first_step <= step + 5                                 # the step goes on from the parent's
    status = json.loads(Path(child["run_dir"], "status.json").read_text())
    assert status["epoch"] == 4 and status["step"] == 4 * 16 and child["evaluations"] == 1
    assert "Lineage" in (d / "summary.md").read_text() and "<th>parent</th>" in (d / "report" / "index.html").read_text()


def test_interrupted_sweep_resumes(tiny, tmp_path):
    """kill -9 of the whole tune_ray.py process group (Ray included) right after a trial finished, then --resume:
    the unfinished trial continues from its checkpoint, ASHA's rungs are rebuilt from the trials' reports (Ray
    restores the searcher, not the scheduler), and the summary agrees with what each trial wrote itself (Tune's
    restored state may predate the finished trial's last report), over the time of both runs."""
    from listening import process_tree
    # ASHA's only rung is at the 3rd evaluation and trials last 4 epochs: the trial interrupted right after its
    # first checkpoint cannot finish (or be stopped by ASHA) before the kill (0.2 s later; an epoch takes seconds). Remedies restart, so a diagnosis
    # does not stop a trial either (`continue` would: see test_a_diagnosed_trial_is_continued_from_its_checkpoint).
    path = sweep_file(tiny, tmp_path, "resume-sweep", base_extra={"training.max_epochs": 4}, num_samples=2,
                      scheduler={"time_attr": "evaluations", "grace_period": 3, "reduction_factor": 2, "max_t": 4},
                      doctor={"remedy": "restart"})
    d = tmp_path / "outputs" / "resume-sweep"
    t_start = time.time()
    proc = subprocess.Popen([sys.executable, "tune_ray.py", str(path)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    tree = []
    try:
        deadline = time.time() + 400
        while time.time() < deadline:   # one trial finished and the next one has its first checkpoint
            done = list(d.glob("trials/*/status.json"))
            lasts = [p for p in d.glob("trials/*/checkpoints/last.pt") if not (p.parents[1] / "status.json").exists()]
            if done and lasts:
                break
            tree = process_tree(proc.pid)
            time.sleep(0.2)
        else:
            pytest.fail("the sweep did not get going")
        first, unfinished = done[0], lasts[0].parents[1]
        first_best = first.parent / "checkpoints" / "best_metrics.json"
        best_mtime = first_best.stat().st_mtime
        tree = process_tree(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        first_run_seconds = time.time() - t_start
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:                # any Ray process of that run that left the group
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    assert not (unfinished / "status.json").exists()                          # it was interrupted mid-run
    again = tune(path)
    assert again.returncode != 0 and "--resume" in again.stderr               # refuses to overwrite
    resumed = tune(path, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    summary = json.loads((d / "summary.json").read_text())
    assert len(summary["trials"]) == 2 and all(t["end"] != "failed" for t in summary["trials"])
    assert first_best.stat().st_mtime == best_mtime                           # the finished trial's best kept
    assert "Resumed from" in (unfinished / "logs" / "runtime.log").read_text()   # the unfinished one continued
    # Ray restores no scheduler state: ASHA's rung at the 3rd evaluation is rebuilt from the finished trial's history,
    # so the resumed trial is judged against it there (stopped if its best is worse, as without the kill)
    assert f"[asha] trial {first.parent.name}: rung records rebuilt" in resumed.stdout, resumed.stdout[-3000:]
    rows = {Path(row["run_dir"]).name: row for row in summary["trials"]}

    def best_at_rung(row):
        return min(h["fid"] for h in row["history"] if h.get("evaluations") and h["evaluations"] <= 3
                   and isinstance(h.get("fid"), (int, float)))
    worse = best_at_rung(rows[unfinished.name]) > best_at_rung(rows[first.parent.name])
    assert (rows[unfinished.name]["end"] == "stopped by ASHA") == worse, rows[unfinished.name]
    for row in summary["trials"]:              # every row says what the trial's own files say
        run = Path(row["run_dir"])
        own_best = json.loads((run / "checkpoints" / "best_metrics.json").read_text())
        assert row["best"]["fid"] == pytest.approx(own_best["fid"]) and row["best_epoch"] == own_best["epoch"]
        if row["end"] == "stopped by ASHA":    # killed by Tune at the rung: no status.json of its own
            assert row["evaluations"] == 3 and not (run / "status.json").exists()
            continue
        status = json.loads((run / "status.json").read_text())
        assert row["epochs"] == status["epoch"] and row["evaluations"] == status["evaluations"]
    fids = [t["best"]["fid"] for t in summary["trials"]]
    assert fids == sorted(fids)
    # the searcher Tune restored tells the same SQLite study: each trial once, with the best it reached
    import optuna
    study = optuna.load_study(study_name="resume-sweep", storage=f"sqlite:///{d / 'optuna.db'}")
    told = sorted(t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert told == pytest.approx(sorted(fids), rel=1e-6)
    segments = json.loads((d / "clock.json").read_text())["segments"]
    assert len(segments) == 2 and summary["wall_seconds"] > segments[0]["last"] - segments[0]["start"] > 0
    assert segments[0]["last"] - segments[0]["start"] <= first_run_seconds


def test_a_diagnosis_makes_the_remedy_the_next_suggestion(tmp_path):
    """No Ray: the searcher gets a result whose diagnosis is loss_oscillating at lr 1e-3; the next point it
    suggests is that trial with lr x2/3 (the guide's 'loss oscillates -> lower lr'), queued in the study."""
    from cmdm.tuning.sweep_file import load_sweep
    from cmdm.tuning.search import build_searcher
    spec = {"name": "unit", "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(tmp_path),
            "space": {"training.lr": {"loguniform": [1e-5, 1e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}},
            "metric": "fid", "mode": "min", "priors": False, "num_samples": 8, "seed": 3}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    sweep.sweep_dir.mkdir(parents=True)
    searcher, priors = build_searcher(sweep, storage_url=None)
    assert priors == []
    first = searcher.suggest("t1")
    result = {"best_fid": 5.0, "training_iteration": 3, "diagnosis": ["loss_oscillating"],
              "config": first}
    searcher.on_trial_result("t1", result)
    searcher.on_trial_complete("t1", result)
    nxt = searcher.suggest("t2")
    assert nxt["training.lr"] == pytest.approx(first["training.lr"] * 2 / 3, rel=1e-3)
    assert nxt["model.dropout"] == pytest.approx(first["model.dropout"])
    assert searcher.remedies[0]["rule"] == "loss_oscillating"
    log = [json.loads(line) for line in (sweep.sweep_dir / "remedies.jsonl").read_text().splitlines()]
    assert log[0]["trial_id"] == "t1" and log[0]["point"]["training.lr"] == nxt["training.lr"]
    # a healthy result queues nothing; the same diagnosis twice is remedied once
    searcher.on_trial_result("t2", {"best_fid": 4.0, "training_iteration": 1, "diagnosis": []})
    searcher.on_trial_result("t1", result)
    assert len(searcher.remedies) == 1


def test_a_remedy_that_repeats_a_queued_point_is_said_once_and_not_queued(tmp_path, capsys):
    """No Ray: with priors, the stable trial's oscillation remedy (lr x2/3) is the lr_down prior, queued already:
    the doctor says so once, and queues nothing new."""
    sweep = _unit_sweep(tmp_path, priors=True)
    searcher, priors = build_searcher_quietly(sweep)
    assert [name for name, _ in priors][:2] == ["stable", "lr_down"]
    stable = searcher.suggest("t1")
    assert stable == priors[0][1]
    result = {"best_fid": 5.0, "training_iteration": 3, "diagnosis": ["loss_oscillating"]}
    for _ in range(2):
        searcher.on_trial_result("t1", result)
    said = [line for line in capsys.readouterr().out.splitlines() if "queued before" in line]
    assert len(said) == 1 and "trial t1: loss_oscillating" in said[0] and "training.lr=" in said[0]
    assert searcher.remedies == [] and len(searcher.queued) == len(priors)


def build_searcher_quietly(sweep):
    from cmdm.tuning.search import build_searcher
    return build_searcher(sweep, storage_url=None, log=lambda *a: None)


def _unit_sweep(tmp_path, **extra):
    from cmdm.tuning.sweep_file import load_sweep
    spec = {"name": "unit", "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(tmp_path),
            "space": {"training.lr": {"loguniform": [1e-5, 1e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}},
            "metric": "fid", "mode": "min", "priors": False, "num_samples": 8, "seed": 3, **extra}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(path)
    sweep.sweep_dir.mkdir(parents=True)
    return sweep


def _checkpoints(run, step, epoch):
    """A last.pt and a model_best.pt with what the searcher reads of them (the loop writes the rest)."""
    run.checkpoints.mkdir(parents=True)
    torch.save({"step": step, "epoch": epoch, "model": {}}, run.last)
    torch.save({"model": {}, "metrics": {"fid": 3.0, "step": step // 2, "epoch": epoch // 2}}, run.best)


def test_a_diagnosed_trial_is_continued_by_its_remedy_trial_and_stopped(tmp_path):
    """No Ray: doctor {remedy: continue}. A diagnosis makes the next suggestion the remedy point with a `_fork`
    entry naming the parent's checkpoint, snapshotted into forks/ (last.pt for oscillation, model_best.pt for FID
    rising), and ForkStopper stops the parent; restart queues the same point without one and stops nothing."""
    from cmdm.run_files import SweepFiles
    from cmdm.tuning.search import ForkStopper, build_searcher
    sweep = _unit_sweep(tmp_path)
    assert sweep.remedy == "continue"
    searcher, _ = build_searcher(sweep, storage_url=None)
    stopper = ForkStopper(searcher)
    first = searcher.suggest("t1")
    _checkpoints(SweepFiles(sweep.sweep_dir).trial("t1"), step=48, epoch=3)
    assert not stopper("t1", {"best_fid": 5.0, "diagnosis": ()})
    assert stopper("t1", {"best_fid": 5.0, "diagnosis": ("loss_oscillating",)})       # the parent is stopped
    nxt = searcher.suggest("t2")
    fork = nxt.pop("_fork")
    assert nxt["training.lr"] == pytest.approx(first["training.lr"] * 2 / 3, rel=1e-3)
    assert {k: fork[k] for k in ("parent", "rule", "kind", "step", "epoch")} == \
        {"parent": "t1", "rule": "loss_oscillating", "kind": "last", "step": 48, "epoch": 3}
    snapshot = Path(fork["checkpoint"])
    assert snapshot.parent == SweepFiles(sweep.sweep_dir).forks and torch.load(snapshot)["step"] == 48
    assert fork["changes"] == {"training.lr": [first["training.lr"], nxt["training.lr"]]}
    searcher.on_trial_complete("t1", {"best_fid": 5.0, "diagnosis": ("loss_oscillating",)})   # remedied once
    assert len(searcher.remedies) == 1 and "_fork" not in searcher.suggest("t3")
    # overfitting continues from the best, at the step of its evaluation (a trial without files restarts)
    assert not stopper("t3", {"best_fid": 4.0, "diagnosis": ("fid_rising",)}) and "_fork" not in searcher.suggest("t9")
    _checkpoints(SweepFiles(sweep.sweep_dir).trial("t2"), step=48, epoch=3)
    assert stopper("t2", {"best_fid": 4.0, "diagnosis": ("fid_rising",)})
    fork = searcher.suggest("t4")["_fork"]
    assert fork["kind"] == "best" and fork["step"] == 24 and fork["epoch"] == 1
    log = [json.loads(line) for line in (sweep.sweep_dir / "remedies.jsonl").read_text().splitlines()]
    assert [(r["fork"] or {}).get("kind") for r in log] == ["last", None, "best"]
    # restart: the remedy is a fresh trial and the diagnosed one goes on
    restart = _unit_sweep(tmp_path / "r", doctor={"remedy": "restart"})
    searcher, _ = build_searcher(restart, storage_url=None)
    searcher.suggest("t1")
    _checkpoints(SweepFiles(restart.sweep_dir).trial("t1"), step=48, epoch=3)
    assert not ForkStopper(searcher)("t1", {"best_fid": 5.0, "diagnosis": ("loss_oscillating",)})
    assert "_fork" not in searcher.suggest("t2") and len(searcher.remedies) == 1


def test_summary_tells_how_each_trial_ended(tmp_path):
    """No Ray: stand-in results for summarise(). A trial cut short before the targets were met was stopped
    by ASHA; one still running when a stop_on_targets sweep met them was stopped by the sweep; a sweep that
    does not stop on its targets never blames them."""
    from types import SimpleNamespace

    from cmdm.tuning.sweep_file import load_sweep
    from cmdm.tuning.run import TargetStopper, TrialClock
    from cmdm.tuning.summary import summarise
    spec = {"name": "ends", "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(tmp_path),
            "space": {"training.lr": {"loguniform": [1e-5, 1e-2]}}, "metric": "fid", "mode": "min",
            "targets": {"fid": "<= 10"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(tmp_path / "s.yaml")
    (sweep.sweep_dir / "trials" / "done").mkdir(parents=True)
    (sweep.sweep_dir / "trials" / "done" / "status.json").write_text('{"stop_reason": "finished"}')

    def result(trial_id, fid, met):
        row = {"trial_id": trial_id, "epoch": 1, "evaluations": 1, "fid": fid, "top1": 0.2, "targets_met": met,
               "timestamp": 100, "time_total_s": 30.0}
        return SimpleNamespace(metrics=row, metrics_dataframe=None, config={"training.lr": 1e-3}, error=None,
                               path=str(tmp_path / trial_id))
    grid = [result("done", 5.0, True), result("early", 50.0, False), result("late", 40.0, False)]
    clock = TrialClock()
    clock.start = {"done": 0.0, "early": 0.0, "late": 0.0}
    clock.end = {"done": 60.0, "early": 20.0, "late": 70.0}
    for enabled, late_end in ((True, "stopped: sweep met its targets"), (False, "stopped by ASHA")):
        stopper = TargetStopper(enabled)
        stopper("done", {"targets_met": True})
        stopper.met_at = 50.0 if enabled else stopper.met_at     # the clock above runs in seconds from 0
        assert (stopper.met_at is None) == (not enabled)
        rows = {r["trial_id"]: r for r in summarise(sweep, grid, 80.0, clock=clock,
                                                     targets_met_at=stopper.met_at)["trials"]}
        assert rows["done"]["end"] == "finished" and rows["early"]["end"] == "stopped by ASHA"
        assert rows["late"]["end"] == late_end
        assert rows["late"]["trial_seconds"] == 70.0 and rows["done"]["targets_met"]


def test_summary_after_a_crash_comes_from_the_trials_own_files(tmp_path):
    """No Ray: the sweep was killed right after trial `a` wrote its last evaluation, and Tune's restored state
    predates it (epoch 2, FID 19.90) while a's best_metrics.json, status.json and runtime.log say FID 15.40
    after 3 epochs. The summary, the ranking and the report's history follow the trial's files; the wall time
    and a's trial time add the run before the resume (clock.json)."""
    from types import SimpleNamespace

    from cmdm.tuning.sweep_file import load_sweep
    from cmdm.tuning.run import TrialClock
    from cmdm.tuning.summary import format_summary, summarise
    spec = {"name": "crash", "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(tmp_path),
            "space": {"training.lr": {"loguniform": [1e-5, 1e-2]}}, "metric": "fid", "mode": "min"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    sweep = load_sweep(tmp_path / "s.yaml")
    a = sweep.sweep_dir / "trials" / "a"
    (a / "checkpoints").mkdir(parents=True)
    (a / "logs").mkdir()
    best = {"fid": 15.4, "top1": 0.31, "top2": 0.45, "top3": 0.55, "mm_dist": 4.0, "step": 48, "epoch": 3,
            "best_metric": "fid"}
    from cmdm.run_files import RunFiles, save_best
    save_best(RunFiles(a), {"w": torch.zeros(1)}, best, sweep.base_config)   # the pair, as a trial writes it
    (a / "status.json").write_text(json.dumps({"stop_reason": "finished", "epoch": 3, "evaluations": 3}))
    log = []
    for e, (loss, fid) in enumerate([(1.3, 25.0), (0.9, 19.9), (0.7, 15.4)], start=1):
        log.append(f"2026-12-02 10:00:0{e} Epoch {e:3d} completed. Avg Loss: {loss:.6f} (2.0 s)")
        log.append(f"2026-12-02 10:00:0{e} [EVAL] FID: {fid:.4f} Top1: 0.3100 Top2: 0.4500 Top3: 0.5500 "
                   f"MM-Dist: 4.0000 (Epoch: {e}, Step: {16 * e})")
    (a / "logs" / "runtime.log").write_text("\n".join(log) + "\n")

    def result(trial_id, rows):
        import pandas as pd
        return SimpleNamespace(metrics=rows[-1], metrics_dataframe=pd.DataFrame(rows), config={"training.lr": 1e-3},
                               error=None, path=str(tmp_path / trial_id))
    tune_a = [{"trial_id": "a", "epoch": e, "evaluations": e, "loss": loss, "fid": fid, "top1": 0.31}
              for e, loss, fid in ((1, 1.3, 25.0), (2, 0.9, 19.9))]                    # Tune's stale state
    tune_b = [{"trial_id": "b", "epoch": 1, "evaluations": 1, "loss": 1.0, "fid": 17.0, "top1": 0.2}]
    (tmp_path / "clock.json").write_text(json.dumps(
        {"segments": [{"start": 0.0, "last": 100.0, "trials": {"a": [10.0, 90.0]}}]}))
    clock = TrialClock(tmp_path / "clock.json")
    clock.setup()                                       # what Tune calls when the resumed run starts
    clock.start, clock.end = {"a": clock.t0, "b": clock.t0}, {"a": clock.t0 + 5.0, "b": clock.t0 + 20.0}
    summary = summarise(sweep, [result("b", tune_b), result("a", tune_a)], clock.wall_seconds(), clock=clock)
    first, second = summary["trials"]
    assert summary["best_trial"] == "a" and first["trial_id"] == "a" and second["trial_id"] == "b"
    assert first["best"]["fid"] == pytest.approx(15.4) and first["best_epoch"] == 3
    assert first["epochs"] == 3 and first["evaluations"] == 3 and first["end"] == "finished"
    assert [h["fid"] for h in first["history"]] == pytest.approx([25.0, 19.9, 15.4])     # report curves
    assert first["history"][-1]["evaluations"] == 3
    assert first["trial_seconds"] == pytest.approx(80.0 + 5.0)                   # 80 s before the resume
    assert summary["wall_seconds"] >= 100.0
    assert "| a | 0.001 | 15.4000 |" in format_summary(summary)
    segments = json.loads((tmp_path / "clock.json").read_text())["segments"]
    assert len(segments) == 2 and segments[0]["last"] == 100.0                   # the earlier run kept
    clock.end["b"] = clock.t0 + 30.0
    clock._save()
    again = TrialClock.from_file(tmp_path / "clock.json")                    # what the driver reads back
    assert again.earlier == segments[:1] and again.seconds("a") == pytest.approx(85.0)
    assert again.seconds("b") == pytest.approx(30.0) and again.wall_seconds() >= 100.0


def test_the_local_ray_token_is_written_for_its_owner_only(tmp_path, monkeypatch):
    """No Ray: a missing ~/.ray/auth_token is written 0600 (Ray's own would be 0644 under umask 022); one that
    exists is never rewritten, only warned about when others may read it; a token the user set is left alone."""
    from cmdm.ray_cluster import RAY_TOKEN_VARIABLES, ensure_private_ray_token
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in RAY_TOKEN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    said = []
    path = ensure_private_ray_token(log=said.append)
    assert path == tmp_path / ".ray" / "auth_token" and (path.stat().st_mode & 0o777) == 0o600
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) and said == []
    assert ensure_private_ray_token(log=said.append) == path and path.read_text() == token and said == []
    path.chmod(0o644)
    ensure_private_ray_token(log=said.append)
    assert path.read_text() == token and "chmod 600" in said[0]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert ensure_private_ray_token(log=said.append) is None
    assert [p.name for p in path.parent.iterdir()] == ["auth_token"]          # no temp file left behind

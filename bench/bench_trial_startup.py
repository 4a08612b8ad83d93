"""Where a sweep trial's start-up goes: each trial's path from "Tune starts it" to "its first training step",
split into phases from timestamps, and the sweep's wall time against the trials' in-loop time.

    python bench/bench_trial_startup.py [SWEEP] [key=value ...] [--label NAME]   (default: a tiny sweep)
    python bench/bench_trial_startup.py --ab REV [--rounds 2] [SWEEP] [key=value ...]
    python bench/bench_trial_startup.py --show outputs/bench_trial_startup-*.json

Without SWEEP the sweep is the test suite's tiny one (200 synthetic clips, a 3-epoch 2-layer model, 4 trials, 2 at
a time; its data and evaluator are made once in outputs/bench_startup/tiny). `--ab REV` runs the same sweep with
the code of git revision REV (a worktree under /tmp) and with this checkout, alternately, `--rounds` times each,
and prints both tables: A/B on the same machine at the same time, which is what a shared machine allows.

The phases of one trial (medians over the trials; the last column is the sum, Tune's start to the first step):
    tune->driver     Tune starts the trial (TrialClock) -> trial_driver runs (its config.yaml written)
    driver->fit      make_trainer and the rest of trial_driver until TorchTrainer.fit asks for its controller
    controller       the controller actor requested -> its process runs its __init__ (Ray's task events)
    ctrl init        the controller's __init__ (unpickling its arguments: the callbacks' modules)
    ctrl->workers    the controller made -> it asks for the worker group's actors (placement group, its cleaner)
    worker proc      a worker actor requested -> its process exists (its create time, logs/startup.json)
    worker actor     the process exists -> the worker actor made (Python, Ray, ray.train imported)
    ->train fn       the worker actor made -> its run_train_fn begins (train context, torch process group)
    ->imported       run_train_fn begins -> cmdm.train imported in it (unpickling the train function)
    ->loop           cmdm.train imported -> train_loop_per_worker entered
    build            the loop's build(): data, model, optimiser, logs
    ->first step     build done -> the first optimiser step (TensorBoard's train/loss at step 1)
Sweep lines: wall time / (sum of the trials' in-loop seconds / concurrency) (goal <= 1.10), and Tune's overhead
around the trials, wall / (sum of trial lifetimes / concurrency) - 1 (goal <= 5%).
Not a test: numbers depend on the machine. Results go to outputs/bench_trial_startup-<label>.json.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs"
TINY = OUT / "bench_startup" / "tiny"
PHASES = ["tune->driver", "driver->fit", "controller", "ctrl init", "ctrl->workers", "worker proc", "worker actor",
          "->train fn", "->imported", "->loop", "build", "->first step"]


def tiny_sweep(out_root: Path) -> Path:
    """The tests' tiny sweep (tests/conftest.py tiny_config, tests/test_tune_ray.py sweep_file), 4 trials, 2 at a
    time, 3 epochs each; data and evaluator made once."""
    sys.path.insert(0, str(ROOT / "tests"))
    import yaml
    from conftest import tiny_config
    if not (TINY / "evaluator" / "evaluator.pt").is_file():
        from cmdm.data.synthetic import generate_dataset
        from cmdm.evaluation.fit import FitConfig, ensure_evaluator
        print(f"making the tiny data and evaluator in {TINY} (once)", flush=True)
        data = generate_dataset(TINY / "data", num_clips=200, seed=0, num_points=256, progress=False)
        ensure_evaluator(data, TINY / "evaluator", progress=False, cfg=FitConfig(epochs=3, ae_epochs=0),
                         log=lambda *a: None)
    base = {k: (str(v) if isinstance(v, Path) else v) for k, v in tiny_config(TINY).items()
            if k != "output_root" and not k.startswith("ray.")}
    base.update({"model.num_layers": [1, 1], "training.max_epochs": 3, "training.early_stopping.enabled": False})
    doc = {"name": "bench-startup", "base": str(ROOT / "configs" / "demo.yaml"), "output_root": str(out_root),
           "overrides": base,
           "space": {"training.lr": {"loguniform": [1.0e-4, 1.0e-2]}, "model.dropout": {"uniform": [0.0, 0.3]}},
           "num_samples": 4, "max_concurrent_trials": 2, "resources": {"num_workers": 1, "cpus_per_worker": 1},
           "scheduler": {"time_attr": "evaluations", "grace_period": 2, "reduction_factor": 2, "max_t": 3},
           "metric": "fid", "mode": "min", "targets": {"fid": "<= 0.001"}, "seed": 0, "priors": False}
    path = out_root / "bench-startup.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def first_step_time(logs: Path) -> float | None:
    """Wall time of the first train/loss scalar (step 1: the bench runs with training.log_every_steps=1)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    for path in sorted(logs.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("summary") and any(v.tag == "train/loss" for v in event.summary.value):
                return event.wall_time
    return None


def creation_tasks() -> dict:
    """Ray's ACTOR_CREATION_TASK records of this Ray (every actor the sweep made), by task id."""
    import ray
    from ray.util.state import list_tasks
    tasks = list_tasks(address=ray.get_runtime_context().gcs_address, filters=[("type", "=", "ACTOR_CREATION_TASK")], detail=True, limit=10000,
                       raise_on_missing_output=False)
    return {t.task_id: t for t in tasks}


def actor_task_starts(actor_id: str) -> dict:
    """When each method of an actor first began running, by method name (Ray's task events)."""
    import ray
    from ray.util.state import list_tasks
    starts = {}
    for t in list_tasks(address=ray.get_runtime_context().gcs_address, filters=[("actor_id", "=", actor_id)],
                        detail=True, limit=1000, raise_on_missing_output=False):
        name = t.func_or_class_name.rsplit(".", 1)[-1]
        if t.start_time_ms and (name not in starts or t.start_time_ms / 1000 < starts[name]):
            starts[name] = t.start_time_ms / 1000
    return starts


def trial_phases(summary: dict, sweep_dir: Path, tasks: dict) -> list[dict]:
    from cmdm.run_files import SweepFiles
    files = SweepFiles(sweep_dir)
    clock = json.loads(files.clock.read_text())["segments"][-1]["trials"]
    by_pid = {t.worker_pid: t for t in tasks.values() if "Worker" in t.func_or_class_name}
    rows = []
    for trial in summary["trials"]:
        tid = trial["trial_id"]
        run = files.trial(tid)
        start = run.logs / "startup.json"
        if not start.is_file():
            continue
        s = json.loads(start.read_text())
        worker = by_pid.get(s["pid"])
        controller = tasks.get(worker.parent_task_id) if worker else None
        ms = lambda v: v / 1000 if v else None     # noqa: E731
        methods = actor_task_starts(worker.actor_id) if worker else {}
        t = {"tune": clock[tid][0], "driver": run.config.stat().st_mtime,
             "fit": ms(controller.creation_time_ms) if controller else None,
             "controller": ms(controller.start_time_ms) if controller else None,
             "ctrl_made": ms(controller.end_time_ms) if controller else None,
             "workers": ms(worker.creation_time_ms) if worker else None,
             "process": s["process_created"], "worker_made": ms(worker.end_time_ms) if worker else None,
             "train_fn": methods.get("run_train_fn"), "imported": s["imported"], "loop": s["loop_entered"],
             "built": s["built"], "step": first_step_time(run.logs)}
        order = ["tune", "driver", "fit", "controller", "ctrl_made", "workers", "process", "worker_made", "train_fn",
                 "imported", "loop", "built", "step"]
        row = {"trial_id": tid}
        for name, a, b in zip(PHASES, order, order[1:]):
            row[name] = t[b] - t[a] if t[a] is not None and t[b] is not None else None
        row["total"] = t["step"] - t["tune"] if t["step"] else None
        row["tune_start"], row["tune_end"] = clock[tid]
        rows.append(row)
    return rows


def run_one(sweep_path: str, overrides: list, label: str) -> dict:
    """One sweep in this process (the sweep folder is started over), then its phase rows and sweep numbers."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    from bench_sweep import overhead       # the same arithmetic as the sweep bench's overhead columns
    from cmdm.tuning.run import run_sweep
    from cmdm.tuning.sweep_file import load_sweep
    out_root = Path(tempfile.mkdtemp(prefix="bench-startup-", dir="/tmp"))
    if sweep_path is None:
        sweep_path = str(tiny_sweep(out_root))
    sweep = load_sweep(sweep_path, [*overrides, f"output_root={out_root}", "base.training.log_every_steps=1"])
    sweep.name = f"{sweep.name}-bench-startup"
    shutil.rmtree(sweep.sweep_dir, ignore_errors=True)
    t0 = time.time()
    summary = run_sweep(sweep, log=lambda *a: None)
    total = time.time() - t0
    tasks = creation_tasks()
    rows = trial_phases(summary, Path(sweep.sweep_dir), tasks)
    conc = sweep.max_concurrent_trials
    _, lifetimes, in_loop = overhead(summary, conc)      # per slot: every trial's lifetime, its in-loop seconds
    ends = sorted(r["tune_end"] for r in rows)
    gaps = [r["tune_start"] - max(e for e in ends if e <= r["tune_start"]) for r in rows
            if any(e <= r["tune_start"] for e in ends)]
    best = next((t for t in summary["trials"] if t["trial_id"] == summary.get("best_trial")), None)
    best = {"trial_id": best["trial_id"], **best["best"]} if best else {}
    result = {"label": label, "code": str(Path(__import__("cmdm").__file__).parents[1]), "sweep": sweep_path,
              "overrides": overrides, "concurrency": conc, "trials": rows, "wall_s": summary["wall_seconds"],
              "run_sweep_s": total, "ray_start_s": summary.get("ray_start_seconds"),
              "in_loop_per_slot_s": in_loop, "lifetimes_per_slot_s": lifetimes,
              "wall_over_in_loop": summary["wall_seconds"] / in_loop if in_loop else None,
              "tune_overhead": summary["wall_seconds"] / lifetimes - 1 if lifetimes else None,
              "gap_end_to_next_start_s": statistics.median(gaps) if gaps else None,
              "actors": sorted([t.func_or_class_name, t.creation_time_ms, t.start_time_ms, t.end_time_ms, t.worker_pid]
                               for t in tasks.values()),
              "best": {k: best.get(k) for k in ("fid", "top1") if k in best}}
    shutil.rmtree(out_root, ignore_errors=True)
    return result


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(results: list[dict]) -> str:
    cols = PHASES + ["total"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"      # noqa: E731
    lines = ["| run | " + " | ".join(cols) + " | wall/in-loop | Tune overhead | gap end->start | best |",
             "|---" * (len(cols) + 5) + "|"]
    for r in results:
        cells = [fmt(median(t.get(c) for t in r["trials"])) for c in cols]
        best = ", ".join(f"{k} {v:.3g}" for k, v in r["best"].items() if isinstance(v, float))
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {fmt(r['wall_over_in_loop'])} | "
                     f"{r['tune_overhead']:.1%} | {fmt(r['gap_end_to_next_start_s'])} | {best} |")
    return "\n".join(lines)


def save(result: dict) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"bench_trial_startup-{result['label']}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def ab(rev: str, rounds: int, sweep, overrides) -> list[dict]:
    """REV's code and this checkout's, alternately, each sweep in a fresh process (its own local Ray)."""
    base = Path(tempfile.mkdtemp(prefix="bench-startup-base-", dir="/tmp")) / "code"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), rev], check=True,
                   capture_output=True)
    results = []
    try:
        for i in range(rounds):
            for name, code in ((f"A-{rev}", base), ("B-this", ROOT)):
                label = f"{name}-{i}".replace("/", "_")
                cmd = [sys.executable, str(Path(__file__).resolve()), *([sweep] if sweep else []), *overrides,
                       "--label", label]
                env = {**os.environ, "PYTHONPATH": str(code)}
                subprocess.run(cmd, env=env, cwd=str(code), check=True)
                results.append(json.loads((OUT / f"bench_trial_startup-{label}.json").read_text()))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", default=None)
    p.add_argument("overrides", nargs="*", help="sweep overrides, e.g. num_samples=4 base.training.max_epochs=2")
    p.add_argument("--label", default="this")
    p.add_argument("--ab", metavar="REV", help="also run git revision REV's code, alternately with this checkout")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--show", nargs="+", metavar="JSON", help="print the table of earlier results")
    args = p.parse_intermixed_args(argv)
    if args.sweep and "=" in args.sweep:
        args.overrides, args.sweep = [args.sweep, *args.overrides], None
    if args.show:
        print(table([json.loads(Path(f).read_text()) for f in args.show]))
        return 0
    if args.ab:
        results = ab(args.ab, args.rounds, args.sweep, args.overrides)
    else:
        result = run_one(args.sweep, args.overrides, args.label)
        print(f"results: {save(result)}")
        results = [result]
    print("\nmedian seconds per trial phase (see the docstring), and the sweep's numbers:\n" + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

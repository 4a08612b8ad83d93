"""Do the guide's rules pay inside a sweep, and what does Tune cost? Four arms of one sweep file, side by side.

    python bench/bench_sweep.py [SWEEP] [--seeds 0 1 2 3 4 5] [--arms ...] [key=value ...]
                                                             (default: sweeps/demo_symptoms.yaml)

For each seed the same sweep runs once per arm:
  (a) continue: the product. Optuna TPE + the guide's priors + ASHA, and the trial doctor's remedies continue the
      diagnosed trial's line from its checkpoint (`doctor: {remedy: continue}`);
  (b) restart: the same, but each remedy is a new trial from scratch (`doctor: {remedy: restart}`);
  (c) tpe: Optuna TPE + ASHA alone (no priors, no doctor);
  (d) random: Tune's random search, every trial trained to its last epoch (no early stopping).
Every arm stops when an evaluation first meets the sweep's targets (stop_on_targets forced on).
Reported per run: trial-epochs spent until the target was first met (every epoch of every trial reported
before that moment: a continued line's child reports only the epochs it trains itself, the parent's are counted
once, in the parent), seconds from the sweep's start to that moment, and the sweep's wall time against its
trials' lifetimes (Tune's overhead) and against their in-loop compute (start-up included).
Goals (issue 15): (a)/(d) <= 0.15 and (a)/(b) <= 0.6 in trial-epochs; overhead <= 5%.
Not a test: numbers depend on the machine. Results also go to outputs/bench_sweep.json (one row per run, written
after each run, so an interrupted bench keeps what it measured; rows of earlier invocations are kept, so seeds
can run on different days, and the table shows them all).
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {"continue": "(a) continue", "restart": "(b) restart", "tpe": "(c) TPE+ASHA", "random": "(d) random"}


def first_hit(summary: dict, met) -> float | None:
    """Timestamp of the first report that met every target, or None. `met(report)`: the sweep's own test
    (Sweep.targets_met), not the `targets_met` the trial reported, so a run can be scored against other
    targets than it ran with (--rescore)."""
    hits = [h["timestamp"] for t in summary["trials"] for h in t["history"] if h.get("timestamp") and met(h)]
    return min(hits) if hits else None


def trial_epochs_to_target(summary: dict, met) -> tuple[int, bool]:
    """Epoch reports of all trials up to the first report that met every target (all of them if none did)."""
    rows = [h for t in summary["trials"] for h in t["history"] if h.get("epoch") and h.get("timestamp")]
    first = first_hit(summary, met)
    if first is None:
        return len(rows), False
    return sum(1 for h in rows if h["timestamp"] <= first), True


def seconds_to_target(summary: dict, sweep_dir: Path, met) -> float | None:
    """From the sweep's start (its clock's first segment: when the Tuner first started) to the first hit."""
    from cmdm.run_files import SweepFiles
    from cmdm.tuning.run import TrialClock
    segments = TrialClock.segments(SweepFiles(sweep_dir).clock)
    first = first_hit(summary, met)
    return first - segments[0]["start"] if first is not None and segments else None


def remedy_records(sweep_dir: Path) -> list[dict]:
    """The remedies the doctor queued (remedies.jsonl): how many continued a line, from which epoch."""
    from cmdm.run_files import SweepFiles
    path = SweepFiles(sweep_dir).remedies
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def overhead(summary: dict, concurrency: int) -> tuple[float, float, float]:
    """(wall seconds, trial lifetimes / trials at once, in-loop compute / trials at once). The first ratio is
    what Tune adds around the trials; the second also counts each trial's start-up (Train workers, data, model)."""
    compute = sum((h.get("epoch_seconds") or 0) + (h.get("eval_seconds") or 0)
                  for t in summary["trials"] for h in t["history"])
    lifetimes = sum(t["trial_seconds"] for t in summary["trials"])
    return summary["wall_seconds"], lifetimes / max(1, concurrency), compute / max(1, concurrency)


def idle_slots(segments: list[dict], concurrency: int) -> dict:
    """Where Tune's overhead goes: the seconds a trial slot stood empty, split into the sweep's head (its start
    until every slot has had its first trial), the turnovers (a trial ended, the next one not yet started: Tune
    stopping the old trial's actors, asking the searcher, starting the new) and the tail (after the last start: no
    trial left to start). Each part over the sum of the trial lifetimes is its share of the overhead column
    (wall / (lifetimes / slots) - 1 = empty slot-seconds / lifetimes), so the parts add up to it."""
    idle = {"head": 0.0, "turnover": 0.0, "tail": 0.0, "turnovers": 0}     # seconds x empty slots
    for seg in segments:
        spans = sorted((a, b) for a, b in seg.get("trials", {}).values())
        if not spans:
            continue
        slots_filled, last_start = spans[min(concurrency, len(spans)) - 1][0], spans[-1][0]
        points = sorted({seg["start"], seg["last"], *(t for span in spans for t in span)})
        for a, b in zip(points, points[1:]):
            running = sum(1 for s, e in spans if s <= a and e >= b)
            empty = max(0, concurrency - running) * (b - a)
            part = "head" if b <= slots_filled else "tail" if a >= last_start else "turnover"
            idle[part] += empty
        idle["turnovers"] += max(0, len(spans) - concurrency)
    return idle


def arm_sweep(path: str, overrides: list[str], arm: str, seed: int, full: bool = False):
    """The sweep file as this arm runs it, in its own folder."""
    from cmdm.tuning.sweep_file import load_sweep
    sweep = load_sweep(path, [*overrides, f"seed={seed}"])
    sweep.name = f"{sweep.name}-bench-{arm}-seed{seed}"
    sweep.stop_on_targets = not full
    if arm in ("continue", "restart"):
        sweep.remedy = arm
    else:
        sweep.priors, sweep.remedy = False, "off"
    return sweep


def run_arm(path: str, overrides: list[str], arm: str, seed: int, full: bool = False, rescore: bool = False) -> dict:
    """Run one arm (or, with rescore, read the summary an earlier run left) and measure it against the sweep
    file's targets. Rescoring a --full run is exact: until the first hit a stopping run makes the same moves."""
    from cmdm.tuning.run import run_sweep
    sweep = arm_sweep(path, overrides, arm, seed, full)
    t0 = time.time()
    if rescore:
        summary = json.loads((Path(sweep.sweep_dir) / "summary.json").read_text())
    else:
        shutil.rmtree(sweep.sweep_dir, ignore_errors=True)      # the bench's own folder from an earlier bench run
        summary = run_sweep(sweep, strategy="random" if arm == "random" else "rules", log=lambda *a: None)
    hit = sweep.targets_met
    epochs, met = trial_epochs_to_target(summary, hit)
    wall, lifetimes, compute = overhead(summary, sweep.max_concurrent_trials)
    remedies = remedy_records(sweep.sweep_dir)
    from cmdm.run_files import SweepFiles
    from cmdm.tuning.run import TrialClock
    idle = idle_slots(TrialClock.segments(SweepFiles(sweep.sweep_dir).clock), sweep.max_concurrent_trials)
    return {"seed": seed, "arm": arm, "trial_epochs": epochs, "target_met": met,
            "seconds_to_target": seconds_to_target(summary, sweep.sweep_dir, hit), "trials": len(summary["trials"]),
            "targets": [str(t) for t in sweep.targets], "rescored": rescore,
            "remedies": len(remedies), "continued": sum(1 for r in remedies if r.get("fork")),
            "inherited_epochs": sum((r.get("fork") or {}).get("epoch") or 0 for r in remedies),
            "wall_s": wall, "trial_lifetimes_s": lifetimes, "compute_s": compute,
            "overhead": wall / lifetimes - 1 if lifetimes else None,
            "overhead_with_startup": wall / compute - 1 if compute else None,
            **{f"overhead_{k}": idle[k] / (lifetimes * sweep.max_concurrent_trials) if lifetimes else None
               for k in ("head", "turnover", "tail")},
            "turnover_s": idle["turnover"] / idle["turnovers"] if idle["turnovers"] else None,
            "ray_start_s": summary.get("ray_start_seconds"), "total_s": time.time() - t0}


def print_table(rows: list[dict]) -> None:
    """Every seed and arm the rows hold, side by side, then the all-seeds ratios against the issue's goals."""
    seeds = sorted({r["seed"] for r in rows})
    arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]

    def get(seed, arm):
        return next((r for r in rows if r["seed"] == seed and r["arm"] == arm), None)

    def cell(r):
        if r is None:
            return "-"
        s = r["seconds_to_target"]
        return (f"{r['trial_epochs']} / {s:.0f} s" if r["target_met"] and s is not None
                else f">= {r['trial_epochs']} (not met in {r['trials']} trials)")

    def ratio(a, b):
        if a is None or b is None or not a["target_met"]:    # a missed: its count is no bound
            return "-"
        bound = "" if b["target_met"] else "<= "              # b missed: its count is a lower bound
        return f"{bound}{a['trial_epochs'] / b['trial_epochs']:.2f}"

    ratios = [(x, y) for x, y in (("continue", "random"), ("continue", "restart")) if x in arms and y in arms]
    head = ["seed"] + [f"{ARMS[a]}: trial-epochs / s to target" for a in arms] \
        + [f"(a)/({'d' if y == 'random' else 'b'})" for x, y in ratios] \
        + [f"overhead {ARMS[a].split(' ')[0]}" for a in arms]
    print("\n| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for seed in seeds:
        runs = [get(seed, a) for a in arms]
        cells = [str(seed)] + [cell(r) for r in runs] + [ratio(get(seed, x), get(seed, y)) for x, y in ratios]
        cells += [f"{r['overhead']:.1%}" if r and r["overhead"] is not None else "-" for r in runs]
        print("| " + " | ".join(cells) + " |")
    total = {a: sum(r["trial_epochs"] for r in rows if r["arm"] == a) for a in arms}
    missed = {a: sum(1 for r in rows if r["arm"] == a and not r["target_met"]) for a in arms}
    print("\nall seeds, trial-epochs: " + ", ".join(
        f"{ARMS[a]} {'>= ' if missed[a] else ''}{total[a]}" + (f" ({missed[a]} not met)" if missed[a] else "")
        for a in arms))
    goals = {("continue", "random"): 0.15, ("continue", "restart"): 0.6}
    for x, y in ratios:
        if total[y]:
            caveat = (" (no bound: both arms missed the targets in some seeds)" if missed[x] and missed[y] else
                      " (an upper bound: some runs of the second missed)" if missed[y] else
                      " (a lower bound: some runs of the first missed)" if missed[x] else "")
            print(f"{ARMS[x]} / {ARMS[y]} = {total[x]}/{total[y]} = {total[x] / total[y]:.2f} "
                  f"(goal <= {goals[(x, y)]}){caveat}")
    for a in arms:
        mine = [r for r in rows if r["arm"] == a and r["overhead"] is not None]
        if mine:
            print(f"{ARMS[a]}: Tune's overhead {sum(r['overhead'] for r in mine) / len(mine):.1%} around the trials "
                  f"(goal <= 5%), {sum(r['overhead_with_startup'] for r in mine) / len(mine):.1%} counting each "
                  f"trial's start-up")
        split = [r for r in mine if r.get("overhead_turnover") is not None]
        if split:
            mean = {k: sum(r[f"overhead_{k}"] for r in split) / len(split) for k in ("head", "turnover", "tail")}
            turn = [r["turnover_s"] for r in split if r.get("turnover_s") is not None]
            print(f"    of which: sweep start {mean['head']:.1%}, turnovers {mean['turnover']:.1%}"
                  + (f" ({sum(turn) / len(turn):.1f} s each)" if turn else "") + f", tail {mean['tail']:.1%}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", default=str(ROOT / "sweeps" / "demo_symptoms.yaml"))
    p.add_argument("overrides", nargs="*", help="sweep overrides, e.g. num_samples=8")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench_sweep.json"))
    p.add_argument("--full", action="store_true", help="run every sweep to its end, targets met or not "
                   "(to calibrate a sweep's targets: what each trial reaches)")
    p.add_argument("--rescore", action="store_true", help="run nothing: score the sweeps an earlier (--full) bench "
                   "left in the output folder against the sweep file's targets now")
    p.add_argument("--table", action="store_true", help="only print the table of the rows already in --out")
    args = p.parse_intermixed_args(argv)
    if "=" in args.sweep:                      # only overrides given: they are not the sweep file
        args.overrides, args.sweep = [args.sweep, *args.overrides], str(ROOT / "sweeps" / "demo_symptoms.yaml")
    out = Path(args.out)
    if args.table:
        print_table(json.loads(out.read_text()))
        return 0
    from cmdm.atomic import atomic_write_text
    out.parent.mkdir(parents=True, exist_ok=True)
    # Rows of earlier invocations stay (seeds 0-2 today, 3-5 tomorrow make one table); a (seed, arm) run again
    # replaces its row.
    rows = json.loads(out.read_text()) if out.is_file() else []
    for seed in args.seeds:
        for arm in args.arms:
            row = run_arm(args.sweep, args.overrides, arm, seed, args.full, args.rescore)
            rows = [r for r in rows if (r["seed"], r["arm"]) != (seed, arm)] + [row]
            print(json.dumps(row), flush=True)
            atomic_write_text(out, json.dumps(rows, indent=2) + "\n")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does the rule-guided sweep reach the target sooner than plain random search, and what does Tune cost?

    python bench/bench_sweep.py [SWEEP] [--seeds 0 1 2] [key=value ...]     (default: sweeps/demo.yaml)

For each seed, the same sweep file runs twice, side by side:
  (a) the product: Optuna TPE + the guide's priors + the trial doctor + ASHA;
  (b) the baseline: random search, every trial trained to its last epoch (no early stopping);
  and, with --ablation, (a') Optuna TPE + ASHA alone (no priors, no doctor): what the warm start adds.
Both stop when an evaluation first meets the sweep's targets (stop_on_targets forced on).
Reported per run: trial-epochs spent until the target was first met (every epoch of every trial reported
before that moment), and the sweep's wall time against its trials' compute: the trials' lifetimes as the Tune
driver clocked them (start-up and epochs cut short included) and, stricter, the training + evaluation seconds
inside the loop, each divided by the trials running at once.
Goal: (a)/(b) <= 0.33, overhead <= 10%.
Not a test: numbers depend on the machine. Results also go to outputs/bench_sweep.json.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def trial_epochs_to_target(summary: dict) -> tuple[int, bool]:
    """Epoch reports of all trials up to the first report that met every target (all of them if none did)."""
    rows = [h for t in summary["trials"] for h in t["history"] if h.get("epoch") and h.get("timestamp")]
    hits = [h["timestamp"] for h in rows if h.get("targets_met")]
    if not hits:
        return len(rows), False
    first = min(hits)
    return sum(1 for h in rows if h["timestamp"] <= first), True


def overhead(summary: dict, concurrency: int) -> tuple[float, float, float]:
    """(wall seconds, trial lifetimes / trials at once, in-loop compute / trials at once). The first ratio is
    what Tune adds around the trials; the second also counts each trial's start-up (Train workers, data, model)."""
    compute = sum((h.get("epoch_seconds") or 0) + (h.get("eval_seconds") or 0)
                  for t in summary["trials"] for h in t["history"])
    lifetimes = sum(t["trial_seconds"] for t in summary["trials"])
    return summary["wall_seconds"], lifetimes / max(1, concurrency), compute / max(1, concurrency)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", nargs="?", default=str(ROOT / "sweeps" / "demo.yaml"))
    p.add_argument("overrides", nargs="*", help="sweep overrides, e.g. num_samples=8")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ablation", action="store_true", help="also run (a') TPE + ASHA without priors and doctor")
    p.add_argument("--only", choices=["rules", "random", "tpe"], help="run one strategy (no ratio table)")
    args = p.parse_intermixed_args(argv)
    strategies = ("rules", "random", "tpe") if args.ablation else ("rules", "random")
    if args.only:
        strategies = (args.only,)
    if "=" in args.sweep:                      # only overrides given: they are not the sweep file
        args.overrides, args.sweep = [args.sweep, *args.overrides], str(ROOT / "sweeps" / "demo.yaml")

    from cmdm.tuning.sweep_file import load_sweep
    from cmdm.tuning.run import run_sweep
    rows = []
    for seed in args.seeds:
        for strategy in strategies:
            sweep = load_sweep(args.sweep, [*args.overrides, f"seed={seed}"])
            sweep.name = f"{sweep.name}-bench-{strategy}-seed{seed}"
            sweep.stop_on_targets = True
            if strategy in ("random", "tpe"):
                sweep.priors, sweep.remedy = False, "off"
            shutil.rmtree(sweep.sweep_dir, ignore_errors=True)
            t0 = time.time()
            summary = run_sweep(sweep, strategy="random" if strategy == "random" else "rules", log=lambda *a: None)
            epochs, met = trial_epochs_to_target(summary)
            wall, lifetimes, compute = overhead(summary, sweep.max_concurrent_trials)
            rows.append({"seed": seed, "strategy": strategy, "trial_epochs": epochs, "target_met": met,
                         "trials": len(summary["trials"]), "wall_s": wall, "trial_lifetimes_s": lifetimes,
                         "compute_s": compute, "overhead": wall / lifetimes - 1 if lifetimes else None,
                         "overhead_with_startup": wall / compute - 1 if compute else None,
                         "ray_start_s": summary.get("ray_start_seconds"), "total_s": time.time() - t0})
            print(json.dumps(rows[-1]), flush=True)

    out = ROOT / "outputs" / (f"bench_sweep-{args.only}.json" if args.only else "bench_sweep.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    if args.only:
        return 0

    def run(seed, strategy):
        return next((r for r in rows if r["seed"] == seed and r["strategy"] == strategy), None)

    def mark(r):
        return f"{r['trial_epochs']}{'' if r['target_met'] else ' (target not met: >=)'}"

    names = {"rules": "(a) rules", "random": "(b) random", "tpe": "(a') TPE+ASHA, no priors"}
    head = ["seed"] + [f"{names[s]}: trial-epochs" for s in strategies] + ["(a)/(b)"] \
        + [f"overhead {names[s].split(' ')[0]}" for s in strategies] \
        + [f"incl. start-up {names[s].split(' ')[0]}" for s in strategies]
    print("\n| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for seed in args.seeds:
        runs = [run(seed, s) for s in strategies]
        cells = [str(seed)] + [mark(r) for r in runs] + [f"{runs[0]['trial_epochs'] / runs[1]['trial_epochs']:.2f}"]
        cells += [f"{r['overhead']:.1%}" for r in runs] + [f"{r['overhead_with_startup']:.1%}" for r in runs]
        print("| " + " | ".join(cells) + " |")
    total = {s: sum(r["trial_epochs"] for r in rows if r["strategy"] == s) for s in strategies}
    print(f"\nall seeds: (a)/(b) = {total['rules']}/{total['random']} = {total['rules'] / total['random']:.2f} "
          f"(goal <= 0.33)" + (f"; (a')/(b) = {total['tpe']}/{total['random']} = {total['tpe'] / total['random']:.2f}"
                               if "tpe" in total else ""))
    for s in strategies:
        mine = [r for r in rows if r["strategy"] == s]
        print(f"{names[s]}: overhead {sum(r['overhead'] for r in mine) / len(mine):.1%} around the trials "
              f"(goal <= 10%), {sum(r['overhead_with_startup'] for r in mine) / len(mine):.1%} counting each "
              f"trial's start-up")
    return 0


if __name__ == "__main__":
    sys.exit(main())

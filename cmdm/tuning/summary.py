"""The sweep's summary: one row per trial, sorted by its best metric (summary.json for programs, summary.md
for people).

Each row comes from the trial's Tune result (its reports, the last one saying how it ended), completed by what
the trial wrote itself where Tune's state is behind it: after a sweep was killed and resumed, Tune's restored
state can predate a trial's last epochs, so its runtime.log, status.json and checked best pair rule.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from cmdm.atomic import atomic_write_text
from cmdm.evaluation.metrics import LOWER_IS_BETTER
from cmdm.run_files import RunFiles, SweepFiles, read_best
from cmdm.tuning.doctor import RULES, best_evaluation, explain, new_evaluations
from cmdm.tuning.space import format_changes, format_value, fork_source
from cmdm.tuning.sweep_file import FORK_KEY, Sweep

ENDED = ("stop_reason", "epoch", "evaluations")   # what a trial's last report (or status.json) says of its end


def _history(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty:
        return [result.metrics] if result.metrics else []
    return [{k: (None if isinstance(v, float) and math.isnan(v) and k not in ("loss",) else v)
             for k, v in row.items()} for row in df.to_dict("records")]


EPOCH_LINE = re.compile(r"Epoch\s+(\d+) completed\. Avg Loss: (\S+) \((\S+) s\)")
EVAL_LINE = re.compile(r"\[EVAL\] FID: (\S+) Top1: (\S+) Top2: (\S+) Top3: (\S+) MM-Dist: (\S+) "
                       r"\(Epoch: (\d+), Step: (\d+)\)")


def runtime_history(log_file: Path) -> dict[int, dict]:
    """epoch -> what the trial's logs/runtime.log says of it: loss, seconds, and the evaluation if there was one
    (an epoch run again after a resume: its last run)."""
    out: dict[int, dict] = {}
    if not log_file.is_file():
        return out
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := EPOCH_LINE.search(line):
            e = int(m[1])
            out[e] = {"epoch": e, "loss": float(m[2]), "epoch_seconds": float(m[3])}
        elif m := EVAL_LINE.search(line):
            e = int(m[6])
            out.setdefault(e, {"epoch": e}).update(
                {k: float(v) for k, v in zip(("fid", "top1", "top2", "top3", "mm_dist"), m.groups()[:5])})
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def with_trial_files(history: list[dict], files: RunFiles, metric: str) -> tuple[list[dict], dict]:
    """Tune's history of a trial completed by what the trial wrote itself: the epochs its runtime.log has beyond
    Tune's are appended (a resumed trial that had already finished reports nothing new). Returns (history, the
    best record of the model_best.pt pair (read_best) when it is by `metric`, else {})."""
    best = read_best(files.checkpoints) or {}     # the model_best.pt / best_metrics.json pair, checked
    if best.get("best_metric", metric) != metric or not isinstance(best.get(metric), (int, float)):
        best = {}
    history = list(history)
    last_epoch = max([h.get("epoch") or 0 for h in history] or [0])
    evaluations = max([h.get("evaluations") or 0 for h in history] or [0])
    for e, row in sorted(runtime_history(files.log_file).items()):
        if e > last_epoch:
            evaluations += "fid" in row
            history.append({**row, "evaluations": evaluations, "from_trial_files": True})
    return history, best


def how_it_ended(last_report: dict, files: RunFiles) -> dict:
    """stop_reason, epoch and evaluations from the trial's last report; from status.json (which the loop writes
    when it ends) only when that report names no stop_reason: a trial stopped from outside, or a killed sweep
    whose restored Tune state predates the trial's end."""
    if last_report.get("stop_reason"):
        return {k: last_report.get(k) for k in ENDED}
    status = _read_json(files.status)
    return {k: status.get(k, last_report.get(k)) for k in ENDED}


def _diagnoses(history: list[dict]) -> list[str]:
    """Every rule the trial's reports named (each report's `diagnosis` is a list of rule names), first named first."""
    return list(dict.fromkeys(name for h in history if isinstance(h.get("diagnosis"), (list, tuple))
                              for name in h["diagnosis"]))


def lineage(config: dict | None) -> dict:
    """A remedy trial that continued another's line (its config's `_fork`, search.py): parent, forked_at_step and
    remedy (the rule, what it moved, and which checkpoint); {} for any other trial."""
    fork = (config or {}).get(FORK_KEY)
    if not isinstance(fork, dict) or "parent" not in fork:
        return {}
    moved = format_changes(fork.get("changes") or {})
    return {"parent": fork["parent"], "forked_at_step": fork.get("step"),
            "remedy": f"{fork.get('rule')}: {moved or '-'} (from its {fork_source(fork)}, epoch {fork.get('epoch')})"}


def _lost_nodes(files) -> list[str]:
    try:
        return [line.strip() for line in files.node_lost.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def summarise(sweep: Sweep, grid, wall_seconds: float, *, clock=None, targets_met_at: float | None = None,
              asha: bool = True) -> dict:
    """One row per trial, sorted by its best metric. clock (TrialClock) gives each trial's lifetime as the driver
    saw it; targets_met_at, when the sweep stopped because a trial met the targets, tells the trials it cut short
    from those ASHA stopped."""
    rows = []
    for result in grid:
        history = _history(result)
        if not history and not result.config:      # created, then the sweep ended before it started
            continue
        last = dict(result.metrics or {})
        params = {k: (result.config or {}).get(k) for k in sweep.space}
        trial_id = last.get("trial_id") or Path(result.path).name
        files = SweepFiles(sweep.sweep_dir).trial(trial_id)
        history, own_best = with_trial_files(history, files, sweep.metric)   # the trial's files rule
        ended = how_it_ended(last, files)
        evals = new_evaluations(history)
        failed = bool(last.get("failed")) or result.error is not None
        best_eval = best_evaluation(history, sweep.metric)
        if own_best:           # best_metrics.json: what the trial kept as its best (and what export copies)
            best_eval = own_best
        reported_seconds = float(max([h.get("time_total_s") or 0 for h in history] or [0]))
        lifetime = clock.seconds(trial_id) if clock is not None else None
        clock_end = clock.end.get(trial_id) if clock is not None else None
        if failed:
            end = "failed"
        elif ended["stop_reason"]:
            end = ended["stop_reason"]
        elif targets_met_at is not None and (clock_end is None or clock_end >= targets_met_at):
            end = "stopped: sweep met its targets"
        else:
            end = "stopped by ASHA" if asha else "stopped"
        rows.append({
            "trial_id": trial_id, "params": params, "end": end,
            "epochs": max([h.get("epoch") or 0 for h in history] + [ended["epoch"] or 0]),
            "evaluations": max(len(evals), ended["evaluations"] or 0),
            "best": {m: best_eval.get(m) for m in ("fid", "top1", "top2", "top3", "mm_dist")} if best_eval else None,
            "best_epoch": best_eval.get("epoch") if best_eval else None,
            "diagnosis": _diagnoses(history), "error": last.get("error"),
            "targets_met": bool(best_eval) and sweep.targets_met(best_eval)
                           or any(bool(h.get("targets_met")) for h in history),
            "train_seconds": float(sum(h.get("epoch_seconds") or 0 for h in history)),
            "trial_seconds": float(lifetime) if lifetime is not None else reported_seconds,
            "history": [{k: h.get(k) for k in ("epoch", "evaluations", "loss", "fid", "top1", "top2", "top3",
                                               "targets_met", "timestamp", "epoch_seconds", "eval_seconds")}
                        for h in history],
            "run_dir": str(files.root),
            "evaluator": (own_best or {}).get("evaluator"),      # fingerprint of the evaluator that scored its best
            "lost_nodes": _lost_nodes(files),    # Ray nodes lost while it trained: each time Tune ran it again
            **lineage(result.config),
        })
    children = {r["parent"]: r["trial_id"] for r in rows if r.get("parent")}
    for r in rows:                 # a parent stopped because its line went on in a remedy trial
        if r["trial_id"] in children and r["end"].startswith("stopped"):
            r["end"] = f"stopped: continued in {children[r['trial_id']]}"
    sign = 1 if LOWER_IS_BETTER[sweep.metric] else -1
    rows.sort(key=lambda r: (r["best"] is None or r["best"].get(sweep.metric) is None,
                             sign * (r["best"] or {}).get(sweep.metric, 0) if r["best"] else 0))
    evaluators = sorted({r["evaluator"] for r in rows if r["evaluator"]})
    return {"sweep": sweep.name, "metric": sweep.metric, "mode": sweep.mode,
            "targets": [str(t) for t in sweep.targets], "wall_seconds": wall_seconds,
            "evaluators": evaluators,     # more than one: the trials' numbers are not comparable
            "trial_seconds_sum": float(sum(r["trial_seconds"] for r in rows)),
            "best_trial": rows[0]["trial_id"] if rows and rows[0]["best"] else None, "trials": rows}


def format_summary(summary: dict) -> str:
    keys = sorted({k for r in summary["trials"] for k in r["params"]})
    short = [k.split(".")[-1] for k in keys]
    head = ["trial"] + short + ["fid", "top1", "top2", "top3", "epochs", "end", "diagnosis", "targets"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["trials"]:
        b = r["best"] or {}
        cells = [r["trial_id"]] + [format_value(r["params"].get(k)) for k in keys]
        cells += [f"{b[m]:.4f}" if b.get(m) is not None else "-" for m in ("fid", "top1", "top2", "top3")]
        end = r["end"] + (f" (retried {len(r['lost_nodes'])}x: node lost)" if r.get("lost_nodes") else "")
        cells += [str(r["epochs"]), end, ", ".join(r["diagnosis"]) or "-", "yes" if r["targets_met"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    rules = {rule.name: rule for rule in RULES}
    sick = [(r["trial_id"], name) for r in summary["trials"] for name in r["diagnosis"] if name in rules]
    if sick:
        lines += ["", "Diagnoses (the remedy became a queued trial where the space and max_remedies allowed):"]
        lines += [f"- {trial_id}: {explain(rules[name])}" for trial_id, name in sick]
    forks = [r for r in summary["trials"] if r.get("parent")]
    if forks:
        lines += ["", "Lineage (remedy trials that continued a diagnosed trial's line):"]
        lines += [f"- {r['trial_id']} continued {r['parent']} at step {r['forked_at_step']}: {r['remedy']}"
                  for r in forks]
    best = summary["best_trial"]
    if len(summary.get("evaluators") or []) > 1:
        groups = {fp: [r["trial_id"] for r in summary["trials"] if r.get("evaluator") == fp]
                  for fp in summary["evaluators"]}
        lines += ["", f"WARNING: the trials were scored by {len(groups)} different evaluators, so their numbers are "
                  "not comparable: " + "; ".join(f"{fp[:12]}: {', '.join(ids)}" for fp, ids in groups.items())
                  + ". Put evaluation.evaluator_dir on storage every node shares and rerun the sweep."]
    tail = [f"\nBest trial: {best}" if best else "\nNo trial reached an evaluation.",
            f"Targets ({', '.join(summary['targets']) or 'none'}): "
            f"{'met' if any(r['targets_met'] for r in summary['trials']) else 'not met'}.",
            f"Wall time {summary['wall_seconds']:.0f} s for {summary['trial_seconds_sum']:.0f} s of trial time."]
    return "\n".join(lines + tail)


def write_summary(sweep: Sweep, summary: dict) -> None:
    files = SweepFiles(sweep.sweep_dir)
    atomic_write_text(files.summary_json, json.dumps(summary, indent=2, default=str) + "\n")
    atomic_write_text(files.summary_md, f"# Sweep {sweep.name}: sorted by best {sweep.metric} ({sweep.mode})\n\n"
                      + format_summary(summary) + "\n")

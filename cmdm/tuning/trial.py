"""One sweep trial: a short driver function that runs a Ray TorchTrainer over `cmdm.train.train_loop_per_worker`
(the same loop as train_ray.py: DDP, evaluation, best checkpoint) in the trial's own run folder, and the
callback that hands each of the loop's reports on to Tune (Train -> Tune) with the trial doctor's diagnosis.
"""
from __future__ import annotations

import time
import traceback

import ray.tune
from ray.tune.integration.ray_train import TuneReportCallback

from cmdm.atomic import atomic_write_text
from cmdm.config import absolute_paths, save_config
from cmdm.ray_cluster import alive_node_ids, describe_nodes, lost_nodes
from cmdm.run_files import SweepFiles
from cmdm.tuning.doctor import best_evaluation, diagnose, new_evaluations
from cmdm.tuning.space import format_changes, fork_source
from cmdm.tuning.sweep_file import FORK_KEY, Sweep

TRIAL_RESOURCE = "trial_driver"   # custom resource: a trial's driver holds no CPU, its Train workers do


def _evidence(findings) -> str:
    """The `diagnosis_detail` column: what each detector saw."""
    return "; ".join(f"{f.rule.name}: {f.evidence}" for f in findings)


def _rule_names(findings) -> tuple[str, ...]:
    """The `diagnosis` column: the names of the rules that fired, which the searcher remedies. A tuple, not a
    list: Tune's TensorBoard logger tries to plot a list as a histogram (and warns when it cannot)."""
    return tuple(f.rule.name for f in findings)


class TrialReportCallback(TuneReportCallback):
    """Forwards rank 0's report to Tune (metrics are already reduced across workers by the loop), with
    the trial's diagnosis, its best metric so far and whether an evaluation met every target."""

    def __init__(self, metric: str, targets, rules=None):
        super().__init__()
        self.metric, self.targets, self.rules = metric, tuple(targets), rules
        self.history: list[dict] = []
        self.targets_met = False

    def after_report(self, run_context, metrics, checkpoint):
        m = dict(metrics[0])
        self.history.append(m)
        evals = new_evaluations(self.history)
        best = best_evaluation(self.history, self.metric)
        if best is not None:
            m[f"best_{self.metric}"] = best[self.metric]
        if evals and evals[-1] is m and self.targets and all(t.met(m) for t in self.targets):
            self.targets_met = True
        m["targets_met"] = self.targets_met
        findings = diagnose(self.history, rules=self.rules)
        m["diagnosis"] = _rule_names(findings)
        m["diagnosis_detail"] = _evidence(findings)
        super().after_report(run_context, [m] + list(metrics[1:]), checkpoint)


def lineage_line(fork: dict) -> str:
    """The first line of a remedy trial's runtime.log: whose line it continues, from where, with which remedy."""
    what = f"{'its best' if fork['kind'] == 'best' else 'its last checkpoint'}, {fork_source(fork)}"
    changes = format_changes(fork.get("changes") or {})
    return (f"Forked from trial {fork['parent']} at step {fork['step']} (epoch {fork['epoch']}, {what}) with "
            f"remedy {fork['rule']}: {changes or 'no searched value moved'}")


def trial_driver(params: dict, sweep: Sweep, shared_data: list | None = None) -> None:
    """One trial: the sweep's base config + `params`, trained by a TorchTrainer in trials/<trial_id>/. A remedy
    trial that continues another's line (`_fork` in params, search.py) starts from that trial's checkpoint.
    `shared_data`: [ObjectRef] of the sweep's train/test clips (run.share_dataset), handed on to the workers."""
    # Imported here, not with this module: Ray Train's controller unpickles TrialReportCallback from this module
    # and needs none of the training code (torch's model, data and evaluation modules: seconds per trial).
    from cmdm.train import make_trainer, record_lost_node, worker_error_line
    trial_id = ray.tune.get_context().get_trial_id()
    sweep_files = SweepFiles(sweep.sweep_dir)
    files = sweep_files.trial(trial_id)           # = the trial config's run_dir: <trials>/<trial_id>
    fork = params.get(FORK_KEY)
    params = {k: v for k, v in params.items() if k != FORK_KEY}
    cfg = absolute_paths(sweep.trial_config(params, name=trial_id, output_root=str(sweep_files.trials)))
    save_config(cfg, files.config)
    if fork and not files.last.is_file():       # not on a retry, which resumes the child's own last.pt
        files.logs.mkdir(parents=True, exist_ok=True)
        with open(files.log_file, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {lineage_line(fork)}\n")
    callback = TrialReportCallback(sweep.metric, sweep.targets, sweep.doctor_rules)
    trainer = make_trainer(cfg, files, callbacks=[callback], fork=fork, shared_data=shared_data)
    nodes = alive_node_ids()
    try:
        trainer.fit()
    except Exception as exc:  # a crash, an OOM: report it as this trial's result; the sweep goes on
        lost = lost_nodes(nodes)
        if lost:   # not the trial's fault: Tune's FailureConfig runs it again, and it resumes from its last.pt
            record_lost_node(files, lost, exc)
            print(f"[trial {trial_id}] Ray node {describe_nodes(lost)} was lost while this trial trained; Tune "
                  "retries it from its last checkpoint (tune.FailureConfig, ray.lost_node_retries)", flush=True)
            raise
        error = "".join(traceback.format_exception(exc))
        findings = diagnose([], error, rules=sweep.doctor_rules)
        atomic_write_text(files.error, error)
        ray.tune.report({"failed": True, "error": worker_error_line(exc)[:200],
                         "diagnosis": _rule_names(findings) or ("crashed",),
                         "diagnosis_detail": _evidence(findings)})

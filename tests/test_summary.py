"""The sweep summary's text: what a person reads in summary.md."""
from cmdm.tuning.summary import format_summary


def _row(trial_id, fid, evaluator):
    return {"trial_id": trial_id, "params": {"training.lr": 1e-4}, "end": "finished", "epochs": 3, "evaluations": 1,
            "best": {"fid": fid, "top1": 0.3, "top2": 0.4, "top3": 0.5, "mm_dist": 3.0}, "best_epoch": 3,
            "diagnosis": [], "targets_met": False, "evaluator": evaluator}


def _summary(rows):
    return {"sweep": "s", "metric": "fid", "mode": "min", "targets": ["fid <= 1"], "wall_seconds": 10.0,
            "trial_seconds_sum": 20.0, "best_trial": rows[0]["trial_id"], "trials": rows,
            "evaluators": sorted({r["evaluator"] for r in rows if r["evaluator"]})}


def test_the_summary_warns_when_trials_were_scored_by_different_evaluators():
    text = format_summary(_summary([_row("t1", 1.5, "a" * 64), _row("t2", 2.5, "b" * 64), _row("t3", 3.0, "a" * 64)]))
    assert "WARNING: the trials were scored by 2 different evaluators" in text
    assert f"{'a' * 12}: t1, t3" in text and f"{'b' * 12}: t2" in text


def test_one_evaluator_gives_no_warning():
    assert "WARNING" not in format_summary(_summary([_row("t1", 1.5, "a" * 64), _row("t2", 2.5, "a" * 64)]))

"""Tests of cmdm.tuning.doctor: each detector on hand-written healthy and sick histories, the remedies as points of a
space, and the warm start giving exactly the guide's values."""

import math

import pytest

from cmdm.tuning.doctor import (
    RULES, apply_remedy, detect_fid_rising, detect_gradient_explosion, detect_loss_not_decreasing,
    detect_loss_oscillating, detect_out_of_memory, diagnose, explain, prior_points,
)
from cmdm.tuning.space import Param

RULE = {rule.name: rule for rule in RULES}


def losses(*values, start=1):
    """One report per epoch with only a loss, as the loop reports it before the first evaluation."""
    return [{"epoch": start + i, "step": 100 * (start + i), "loss": v} for i, v in enumerate(values)]


def evaluated(*pairs):
    """Reports of (evaluations, fid); the fid of the last evaluation is carried over between evaluations."""
    return [{"epoch": i + 1, "loss": 0.3, "evaluations": n, "fid": f, "top1": 0.4} for i, (n, f) in enumerate(pairs)]


def names(findings):
    return [f.rule.name for f in findings]


HEALTHY_LOSS = (1.2, 0.47, 0.33, 0.28, 0.26)


# ---------------------------------------------------------------- the table

def test_table_has_one_row_per_guide_row_in_order():
    assert [r.name for r in RULES] == ["out_of_memory", "loss_oscillating", "loss_not_decreasing", "fid_rising",
                                       "gradient_explosion", "training_slow"]
    assert RULE["training_slow"].detector is None
    assert RULE["gradient_explosion"].remedy == (("training.grad_clip", 0.5), ("training.lr", 2 / 3))


# ---------------------------------------------------------------- out of memory

@pytest.mark.parametrize("error", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "terminate called after throwing an instance of 'std::bad_alloc'",
    "OSError: [Errno 12] Cannot allocate memory",
    "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.",
])
def test_out_of_memory_from_the_error_text(error):
    text = f"Traceback (most recent call last):\n  File \"train.py\", line 3\n{error}\n"
    evidence = detect_out_of_memory([], text)
    assert evidence == error[:100]
    assert names(diagnose(losses(1.0, 0.5), text)) == ["out_of_memory"]


@pytest.mark.parametrize("error", [None, "", "RuntimeError: injected failure at step 5 (CMDM_INJECT_FAILURE_AT_STEP)",
                                   "ValueError: memory_format must be contiguous"])
def test_other_errors_are_not_out_of_memory(error):
    assert detect_out_of_memory(losses(1.0, 0.5), error) is None


# ---------------------------------------------------------------- loss oscillating

def test_oscillating_loss():
    evidence = detect_loss_oscillating(losses(1.2, 0.47, 0.40, 0.45, 0.38, 0.44), None)
    assert evidence == "loss 1.2 -> 0.47 -> 0.4 -> 0.45 -> 0.38 -> 0.44 over epochs 1-6"


def test_up_down_up_is_oscillation():
    evidence = detect_loss_oscillating(losses(0.81, 0.86, 0.80, 0.86), None)
    assert evidence == "loss 0.81 -> 0.86 -> 0.8 -> 0.86 over epochs 1-4"


def test_one_big_rise_is_oscillation():
    assert detect_loss_oscillating(losses(0.5, 0.3, 0.28, 0.4), None) == "loss rose 0.28 -> 0.4 (+43%) at epoch 4"


def test_only_the_last_six_epochs_count():
    early_bounce = losses(0.9, 0.6, 0.7, 0.5, 0.55, 0.40, 0.38, 0.36, 0.34, 0.33, 0.32, 0.31)
    assert detect_loss_oscillating(early_bounce[:6], None) is not None
    assert detect_loss_oscillating(early_bounce, None) is None


@pytest.mark.parametrize("curve", [
    HEALTHY_LOSS,
    (0.26, 0.255, 0.262, 0.257, 0.261, 0.256),    # a plateau with ~2% noise
    (0.30, 0.28, 0.30, 0.29, 0.27),               # one blip up inside a falling curve
    (0.30, 0.31, 0.305, 0.32, 0.30, 0.31),         # moves below 5% of the level
])
def test_healthy_loss_does_not_oscillate(curve):
    assert detect_loss_oscillating(losses(*curve), None) is None


def test_nan_and_missing_losses_are_skipped_by_the_loss_detectors():
    history = losses(1.2, 0.47, 0.33) + [{"epoch": 4}, {"epoch": 5, "loss": None}] + losses(0.28, 0.26, start=6)
    assert detect_loss_oscillating(history, None) is None
    assert detect_loss_not_decreasing(history, None) is None
    assert detect_loss_oscillating([{}, {}, {}], None) is None
    assert detect_loss_not_decreasing([{}, {}, {}], None) is None


# ---------------------------------------------------------------- loss not decreasing

def test_flat_loss_does_not_decrease():
    assert detect_loss_not_decreasing(losses(0.95, 0.94, 0.93, 0.93), None) == "loss 0.95 -> 0.93 over epochs 1-4 (-2%)"
    assert names(diagnose(losses(0.95, 0.94, 0.93, 0.93))) == ["loss_not_decreasing"]


def test_two_epochs_are_too_few_to_call_the_loss_flat():
    assert detect_loss_not_decreasing(losses(0.95, 0.95), None) is None


def test_decreasing_loss_is_healthy():
    assert detect_loss_not_decreasing(losses(*HEALTHY_LOSS), None) is None
    assert diagnose(losses(*HEALTHY_LOSS)) == []


def test_a_bouncing_loss_is_not_reported_as_too_slow():
    """Raising lr would make a bouncing loss worse: only the oscillation is reported."""
    history = losses(0.50, 0.56, 0.48, 0.55, 0.50)
    assert detect_loss_not_decreasing(history, None) is not None
    assert names(diagnose(history)) == ["loss_oscillating"]


# ---------------------------------------------------------------- fid rising

def test_fid_rising_after_its_best():
    history = evaluated((1, 0.9), (2, 0.4), (3, 0.31), (4, 0.45), (5, 0.52))
    assert detect_fid_rising(history, None) == "fid best 0.31 at evaluation 3, then 0.45, 0.52"


def test_carried_over_fid_is_not_counted_twice():
    # Evaluations every 2 epochs: each fid appears twice, but only 2 evaluations follow the best.
    history = evaluated((1, 0.9), (1, 0.9), (2, 0.31), (2, 0.31), (3, 0.45), (3, 0.45))
    assert detect_fid_rising(history, None) is None               # only 1 evaluation after the best
    history += evaluated((4, 0.52))
    assert detect_fid_rising(history, None) == "fid best 0.31 at evaluation 2, then 0.45, 0.52"


def test_reports_without_an_evaluation_count_are_not_evaluations():
    history = [{"epoch": 1, "loss": 1.0}] + evaluated((1, 0.3), (2, 0.5)) + [{"epoch": 9, "fid": 0.6}, {"fid": 0.7}]
    assert detect_fid_rising(history, None) is None


@pytest.mark.parametrize("pairs", [
    ((1, 0.9), (2, 0.5), (3, 0.35), (4, 0.33), (5, 0.36), (6, 0.34), (7, 0.35)),   # improves, then within 10%
    ((1, 0.9), (2, 0.5), (3, 0.31), (4, 0.45)),                                   # one bad evaluation: noise
    ((1, 0.9), (2, 0.31), (3, 0.45), (4, 0.33)),                                  # came back down
    ((1, 0.9), (2, 0.6), (3, 0.4)),                                               # still improving
])
def test_healthy_fid_curves(pairs):
    assert detect_fid_rising(evaluated(*pairs), None) is None


def test_nan_fid_is_not_an_evaluation_to_compare():
    history = evaluated((1, 0.31), (2, float("nan")), (3, 0.45))
    assert detect_fid_rising(history, None) is None


# ---------------------------------------------------------------- gradient explosion

def test_nan_loss_is_an_explosion():
    history = losses(1.0, 0.5, float("nan"))
    assert detect_gradient_explosion(history, None) == "non-finite loss (nan) at epoch 3"


def test_infinite_grad_norm_is_an_explosion():
    history = [{"epoch": 1, "loss": 1.0, "grad_norm": 2.0, "grad_norm_max": math.inf}]
    assert detect_gradient_explosion(history, None) == "non-finite grad_norm_max (inf) at epoch 1"


def test_diverged_run_is_an_explosion_first_in_the_diagnosis():
    history = losses(1.2, 0.6, 0.7, 0.5, 0.9) + [{"epoch": 6, "step": 600, "stop_reason": "diverged"}]
    found = diagnose(history)
    assert names(found) == ["gradient_explosion", "loss_oscillating"]
    assert found[0].evidence == "training diverged at epoch 6 (non-finite loss or gradient)"


def test_gradient_spike_against_the_epochs_before():
    history = [{"epoch": e, "loss": 0.3, "grad_norm": g, "grad_norm_max": m}
               for e, g, m in [(1, 2.0, 9.0), (2, 0.5, 3.0), (3, 0.4, 2.5), (4, 0.4, 45.0)]]
    assert detect_gradient_explosion(history, None) == (
        "grad_norm_max 45 at epoch 4 > 20 x median grad_norm 0.5 of the epochs before")


def test_healthy_gradients():
    # Early epochs have large norms (warmup), later spikes of a few times the usual size are normal.
    history = [{"epoch": e, "loss": 0.3, "grad_norm": g, "grad_norm_max": m, "stop_reason": ""}
               for e, g, m in [(1, 3.0, 40.0), (2, 0.6, 4.0), (3, 0.4, 5.0), (4, 0.35, 6.0), (5, 0.3, 4.0)]]
    assert detect_gradient_explosion(history, None) is None
    assert detect_gradient_explosion([{}, {"grad_norm_max": 100.0}], None) is None   # no baseline yet
    assert detect_gradient_explosion(evaluated((1, 0.3)) + [{"stop_reason": "early_stopping"}], None) is None


# ---------------------------------------------------------------- diagnose / summary

def test_explain():
    assert explain(RULE["loss_oscillating"]) == "loss_oscillating: lr too high -> training.lr x0.67"
    assert explain(RULE["fid_rising"]) == ("fid_rising: too little regularisation -> "
                                           "model.dropout x1.33 + training.weight_decay x10")


def test_diagnose_puts_fatal_rules_first_then_table_order():
    history = evaluated((1, 0.9), (2, 0.31), (3, 0.45), (4, 0.52)) + [{"epoch": 5, "stop_reason": "diverged"}]
    assert names(diagnose(history, "CUDA out of memory")) == ["out_of_memory", "gradient_explosion", "fid_rising"]
    assert diagnose([]) == [] and diagnose(None) == []
    # a fine-tune sweep leaves out loss_not_decreasing (its loss starts low and stays flat, as it should)
    assert names(diagnose(history, "CUDA out of memory", rules=("fid_rising", "out_of_memory"))) == [
        "out_of_memory", "fid_rising"]


# ---------------------------------------------------------------- remedies

SPACE = {p.key: p for p in [
    Param("training.lr", "loguniform", 1e-5, 1e-4),
    Param("model.dropout", "uniform", 0.0, 0.5),
    Param("training.weight_decay", "loguniform", 1e-5, 1e-2),
    Param("training.grad_clip", "choice", values=(0.5, 1.0)),
    Param("task.train.batch_size", "choice", values=(16, 32)),
    Param("model.dit_drop_path", "uniform", 0.0, 0.2),
]}
STABLE = {"training.lr": 3e-5, "model.dropout": 0.15, "training.weight_decay": 1e-4, "training.grad_clip": 1.0,
          "task.train.batch_size": 32, "model.dit_drop_path": 0.05}


def test_remedy_of_an_oscillating_trial():
    point = apply_remedy({**STABLE, "training.lr": 1e-4}, RULE["loss_oscillating"], SPACE)
    assert point == {**STABLE, "training.lr": 6.667e-5}


def test_remedy_is_clipped_into_the_space_then_none_at_the_bound():
    point = apply_remedy({**STABLE, "training.lr": 8e-5}, RULE["loss_not_decreasing"], SPACE)
    assert point == {**STABLE, "training.lr": 1e-4}                         # 1.333e-4 clipped
    assert apply_remedy(point, RULE["loss_not_decreasing"], SPACE) is None
    assert apply_remedy({**STABLE, "training.weight_decay": 1e-2, "model.dropout": 0.5},
                        RULE["fid_rising"], SPACE) is None


def test_remedy_ignores_keys_outside_the_space():
    space = {"training.lr": SPACE["training.lr"]}
    point = apply_remedy({"training.lr": 3e-5}, RULE["gradient_explosion"], space)
    assert point == {"training.lr": 2e-5}                                   # grad_clip not searched
    assert apply_remedy({"training.lr": 3e-5}, RULE["out_of_memory"], space) is None


def test_remedy_on_a_choice_param_picks_a_choice():
    point = apply_remedy(STABLE, RULE["out_of_memory"], SPACE)
    assert point == {**STABLE, "task.train.batch_size": 16} and isinstance(point["task.train.batch_size"], int)
    assert apply_remedy(point, RULE["out_of_memory"], SPACE) is None        # 8 is nearest to 16
    assert apply_remedy(point, RULE["training_slow"], SPACE) == STABLE
    space = {**SPACE, "task.train.batch_size": Param("task.train.batch_size", "choice", values=(24, 64))}
    assert apply_remedy({**STABLE, "task.train.batch_size": 64}, RULE["out_of_memory"], space)[
        "task.train.batch_size"] == 24


def test_remedy_leaves_the_trial_params_alone():
    params = dict(STABLE)
    apply_remedy(params, RULE["fid_rising"], SPACE)
    assert params == STABLE


# ---------------------------------------------------------------- warm start

def test_prior_points_are_the_guides_values():
    points = prior_points(STABLE, SPACE)
    assert [name for name, _ in points] == ["stable", "lr_down", "lr_up", "regularise", "clip_harder", "batch_16"]
    assert dict(points) == {
        "stable": STABLE,
        "lr_down": {**STABLE, "training.lr": 2e-5},
        "lr_up": {**STABLE, "training.lr": 5e-5},
        "regularise": {**STABLE, "model.dropout": 0.2, "training.weight_decay": 1e-3},
        "clip_harder": {**STABLE, "training.grad_clip": 0.5},
        "batch_16": {**STABLE, "task.train.batch_size": 16},
    }


def test_prior_points_drop_what_a_small_space_cannot_express():
    space = {k: SPACE[k] for k in ("training.lr", "model.dropout")}
    base = {"training.lr": 3e-5, "model.dropout": 0.15}
    assert prior_points(base, space) == [
        ("stable", base),
        ("lr_down", {"training.lr": 2e-5, "model.dropout": 0.15}),
        ("lr_up", {"training.lr": 5e-5, "model.dropout": 0.15}),
        ("regularise", {"training.lr": 3e-5, "model.dropout": 0.2}),
    ]


def test_prior_points_skip_variants_equal_to_base_or_to_each_other():
    space = {"training.lr": Param("training.lr", "choice", values=(2e-5, 3e-5)),
             "task.train.batch_size": Param("task.train.batch_size", "choice", values=(32,))}
    base = {"training.lr": 3e-5, "task.train.batch_size": 32}
    # lr x5/3 goes to the nearest choice, 3e-5: the base again; batch 16 is not a choice.
    assert prior_points(base, space) == [("stable", base), ("lr_down", {**base, "training.lr": 2e-5})]
    narrow = {"training.lr": Param("training.lr", "loguniform", 2.5e-5, 3.5e-5)}
    assert prior_points({"training.lr": 3e-5}, narrow) == [
        ("stable", {"training.lr": 3e-5}), ("lr_down", {"training.lr": 2.5e-5}), ("lr_up", {"training.lr": 3.5e-5})]

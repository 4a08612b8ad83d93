"""The stable-training guide's troubleshooting table, as data a sweep can act on.

The guide says: out of memory -> batch 16; loss oscillates -> lr 2e-5; loss does not decrease -> lr 5e-5;
FID rises -> dropout 0.2 and weight_decay 1e-3; gradient explosion -> grad_clip 0.5; training slow -> larger
batch. Here each row is a `Rule` in `RULES`: a symptom, a cause, a remedy written as factors on dotted config
keys (so it applies to any trial, not only to the stable values) and a detector that recognises the symptom.

How a sweep uses it:
  * the trial diagnoses itself: its report callback (cmdm/tuning/trial.py) calls `diagnose(history)` after
    every report (history = one dict per epoch, as the training loop reports them) and adds the names of the
    rules that fired to the report (`diagnosis`, a list); a trial that crashed is diagnosed from its error text;
  * the searcher turns each rule named into a new trial with `apply_remedy(params, rule, space)`; with the sweep's
    `doctor: {remedy: continue}` (the default) that trial continues the diagnosed trial's line from the checkpoint
    the rule's `continue_from` names (its best for overfitting, its last for the others) instead of starting over;
  * `prior_points(base, space)` are the first trials: the stable values and one variant per remedy.

Rules are data and the thresholds are module constants: to change what counts as "oscillating", change a
number here, not the searcher.
"""
from __future__ import annotations

import math
import numbers
import re
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from cmdm.evaluation.metrics import LOWER_IS_BETTER
from cmdm.tuning.space import Param


@dataclass(frozen=True)
class Rule:
    """One row of the guide: symptom -> cause -> remedy ((dotted_key, factor) pairs that multiply the value).

    `continue_from`: which of the diagnosed trial's checkpoints its remedy trial continues from when the sweep
    continues lines ("best": model_best.pt, the weights before the overfitting; "last": last.pt, the full state
    at the diagnosis); None: the remedy starts over (the batch size changes what a step is, a crash left nothing)."""
    name: str
    symptom: str
    cause: str
    remedy: tuple[tuple[str, float], ...]
    detector: Callable[[list[dict], str | None], str | None] | None
    continue_from: str | None = None


# ---------------------------------------------------------------- thresholds (why each number)

# Loss does not decrease: a diffusion loss falls by well over half in its first epochs (1.2 -> 0.3 is
# normal), so after 3 epochs a curve still within 5% of where it started is flat, not slow-but-fine.
FLAT_MIN_EPOCHS = 3
FLAT_RATIO = 0.95

# Loss oscillates: an epoch mean averages hundreds of batches, so epoch-to-epoch noise is ~1-3%. In the
# last 6 epochs, moves above 5% that go up, down and up again (2 separate rises) are the lr bouncing; one
# rise inside a falling curve is a blip. A single epoch 25% above the one before is a spike no healthy run shows.
OSC_WINDOW = 6
OSC_STEP = 0.05
OSC_MIN_RISES = 2
OSC_JUMP = 0.25

# FID rises: an FID on 500 samples moves by ~10% between evaluations of a healthy run. Overfitting is a
# trend: the last 2 evaluations both more than 20% above the best, with the best not among them.
FID_AFTER_BEST = 2
FID_RISE = 1.2

# Gradient explosion: the pre-clip norm of a healthy transformer spikes to a few times its usual size; 20x
# the median epoch mean of the epochs before is an explosion. The median needs 2 epochs to mean anything.
GRAD_SPIKE = 20.0
GRAD_MIN_EPOCHS = 2

# Out of memory: what CUDA, cuBLAS, the C++ allocator, the OS and Ray's memory monitor write.
OOM_PATTERN = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|std::bad_alloc|"
                         r"Cannot allocate memory", re.IGNORECASE)

# A remedy that moves a value by less than this (relative) is no remedy: it is the same trial again.
SAME_VALUE = 1e-3


# ---------------------------------------------------------------- reading the history

def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


def _epoch(report: dict, index: int):
    return report.get("epoch", index + 1)


def _losses(history: list[dict]) -> list[tuple]:
    """(epoch, loss) of every report with a finite loss; non-finite ones are the explosion detector's."""
    return [(_epoch(r, i), float(r["loss"])) for i, r in enumerate(history) if _finite(r.get("loss"))]


def new_evaluations(history: list[dict]) -> list[dict]:
    """The reports that carry a new evaluation, each evaluation once: between evaluations a report carries the
    last metrics over, and a report is a new evaluation only when its `evaluations` count went up. No count,
    no evaluation."""
    evals, seen = [], 0
    for report in history:
        count = report.get("evaluations")
        if _number(count) and count > seen:
            evals.append(report)
            seen = count
    return evals


def best_evaluation(history: list[dict], metric: str) -> dict | None:
    """The evaluation report with the best finite `metric` (LOWER_IS_BETTER says which way), or None."""
    finite = [r for r in new_evaluations(history) if _finite(r.get(metric))]
    if not finite:
        return None
    return (min if LOWER_IS_BETTER[metric] else max)(finite, key=lambda r: r[metric])


def _fids(history: list[dict]) -> list[tuple[int, float]]:
    """(count, fid) of each evaluation with a finite fid."""
    return [(int(r["evaluations"]), float(r["fid"])) for r in new_evaluations(history) if _finite(r.get("fid"))]


def _curve(points: list[tuple]) -> str:
    """'loss 0.81 -> 0.84 -> 0.80 over epochs 2-4'."""
    values = " -> ".join(f"{v:.3g}" for _, v in points)
    return f"loss {values} over epochs {points[0][0]}-{points[-1][0]}"


# ---------------------------------------------------------------- detectors: (history, error) -> evidence | None

def detect_out_of_memory(history: list[dict], error: str | None) -> str | None:
    """The trial died of memory: only the error text says so."""
    if not error:
        return None
    match = OOM_PATTERN.search(error)
    if match is None:
        return None
    start = error.rfind("\n", 0, match.start()) + 1
    end = error.find("\n", match.end())
    line = error[start:end if end >= 0 else len(error)].strip()
    return line if len(line) <= 100 else line[:97] + "..."


def detect_loss_oscillating(history: list[dict], error: str | None) -> str | None:
    """The last epochs' loss bounces up and down (or jumps up once): the steps overshoot."""
    window = _losses(history)[-OSC_WINDOW:]
    pairs = list(zip(window, window[1:]))
    for (_, before), (epoch, after) in pairs:
        if before > 0 and after > (1 + OSC_JUMP) * before:
            return f"loss rose {before:.3g} -> {after:.3g} (+{after / before - 1:.0%}) at epoch {epoch}"
    # Direction of every move above OSC_STEP (True = up), then the separate runs of rises among them.
    ups = [after > before for (_, before), (_, after) in pairs if abs(after - before) > OSC_STEP * abs(before)]
    rises = sum(1 for i, up in enumerate(ups) if up and (i == 0 or not ups[i - 1]))
    if rises >= OSC_MIN_RISES:
        return _curve(window)
    return None


def detect_loss_not_decreasing(history: list[dict], error: str | None) -> str | None:
    """After a few epochs the loss is still about where it started: the steps are too small."""
    losses = _losses(history)
    if len(losses) < FLAT_MIN_EPOCHS:
        return None
    (first_epoch, first), (last_epoch, last) = losses[0], losses[-1]
    if last > FLAT_RATIO * first:
        change = f" ({last / first - 1:+.0%})" if first else ""
        return f"loss {first:.3g} -> {last:.3g} over epochs {first_epoch}-{last_epoch}{change}"
    return None


def detect_fid_rising(history: list[dict], error: str | None) -> str | None:
    """FID got worse after its best and stayed worse: the model is overfitting."""
    evals = _fids(history)
    fids = [fid for _, fid in evals]
    if len(fids) < 1 + FID_AFTER_BEST:
        return None
    best_index = min(range(len(fids)), key=fids.__getitem__)
    best, after = fids[best_index], fids[best_index + 1:]
    if len(after) >= FID_AFTER_BEST and all(f > FID_RISE * best for f in fids[-FID_AFTER_BEST:]):
        later = ", ".join(f"{f:.3g}" for f in after[-4:])
        return f"fid best {best:.3g} at evaluation {evals[best_index][0]}, then {later}"
    return None


def detect_gradient_explosion(history: list[dict], error: str | None) -> str | None:
    """A non-finite loss or gradient, a run the loop stopped as diverged, or a gradient norm far above usual."""
    for i, report in enumerate(history):
        for key in ("loss", "grad_norm", "grad_norm_max"):
            value = report.get(key)
            if _number(value) and not math.isfinite(value):
                return f"non-finite {key} ({value}) at epoch {_epoch(report, i)}"
    for i, report in enumerate(history):
        if report.get("stop_reason") == "diverged":
            return f"training diverged at epoch {_epoch(report, i)} (non-finite loss or gradient)"
    norms = []
    for i, report in enumerate(history):
        peak = report.get("grad_norm_max")
        if len(norms) >= GRAD_MIN_EPOCHS and _finite(peak) and peak > GRAD_SPIKE * statistics.median(norms):
            return (f"grad_norm_max {peak:.3g} at epoch {_epoch(report, i)} > {GRAD_SPIKE:g} x median grad_norm "
                    f"{statistics.median(norms):.3g} of the epochs before")
        if _finite(report.get("grad_norm")):
            norms.append(float(report["grad_norm"]))
    return None


# ---------------------------------------------------------------- the table

# Factors chosen so that, on the guide's stable values, they give the guide's remedies exactly (after
# rounding to 4 significant digits): lr 3e-5 -> 2e-5 / 5e-5, dropout 0.15 -> 0.2, weight_decay 1e-4 -> 1e-3,
# grad_clip 1.0 -> 0.5, batch 32 -> 16.
LR, DROPOUT, WEIGHT_DECAY = "training.lr", "model.dropout", "training.weight_decay"
GRAD_CLIP, BATCH = "training.grad_clip", "task.train.batch_size"

RULES: tuple[Rule, ...] = (
    Rule("out_of_memory", "out of (GPU) memory", "batch too large", ((BATCH, 0.5),), detect_out_of_memory),
    Rule("loss_oscillating", "training crashes / loss oscillates", "lr too high", ((LR, 2 / 3),),
         detect_loss_oscillating, "last"),
    Rule("loss_not_decreasing", "loss does not decrease / converges slowly", "lr too low", ((LR, 5 / 3),),
         detect_loss_not_decreasing, "last"),
    Rule("fid_rising", "FID rises after its best (overfitting)", "too little regularisation",
         ((DROPOUT, 4 / 3), (WEIGHT_DECAY, 10.0)), detect_fid_rising, "best"),
    Rule("gradient_explosion", "gradient explosion / non-finite loss", "gradients too large",
         ((GRAD_CLIP, 0.5), (LR, 2 / 3)), detect_gradient_explosion, "last"),
    Rule("training_slow", "training slow", "batch too small", ((BATCH, 2.0),), None),   # a judgement, not a signal
)

# These end the trial; they come first so that the searcher acts on them before anything else.
FATAL = ("out_of_memory", "gradient_explosion")


@dataclass
class Finding:
    """A rule whose symptom a trial shows, with the numbers that show it."""
    rule: Rule
    evidence: str


def diagnose(history: list[dict], error: str | None = None, rules: Sequence[str] | None = None) -> list[Finding]:
    """Every rule whose detector fires on this history (fatal ones first, then table order); `rules` limits
    the check to the rules named (None: all)."""
    history = list(history or [])
    findings = []
    for rule in RULES:
        if rules is not None and rule.name not in rules:
            continue
        evidence = rule.detector(history, error) if rule.detector else None
        if evidence:
            findings.append(Finding(rule, evidence))
    # A loss that bounces or explodes is also "not decreasing", but raising lr would make it worse.
    names = {f.rule.name for f in findings}
    if names & {"loss_oscillating", "gradient_explosion"}:
        findings = [f for f in findings if f.rule.name != "loss_not_decreasing"]
    findings.sort(key=lambda f: f.rule.name not in FATAL)   # stable: table order otherwise
    return findings


def describe_remedy(rule: Rule) -> str:
    """'training.lr x0.67'."""
    return " + ".join(f"{key} x{round(factor, 2):g}" for key, factor in rule.remedy)


def explain(rule: Rule) -> str:
    """One line for people: 'name: cause -> remedy' (the sweep summary's list of diagnoses)."""
    return f"{rule.name}: {rule.cause} -> {describe_remedy(rule)}"


# ---------------------------------------------------------------- remedies as new points of the space

def _round(value: float) -> float:
    """4 significant digits, so that 0.15 * 4/3 is 0.2 and 3e-5 * 2/3 is 2e-5."""
    return float(f"{value:.4g}")


def _remedied(params: dict, remedy, space: dict[str, Param]) -> dict | None:
    """The point with each searched key of `remedy` multiplied, rounded and clipped; None if nothing moved."""
    point = {key: params[key] for key in space}
    changed = False
    for key, factor in remedy:
        if key not in space or not _number(point[key]):
            continue                                    # not searched, or a non-numeric choice
        old = point[key]
        new = old * factor
        new = int(round(new)) if isinstance(old, numbers.Integral) else _round(new)
        new = space[key].clip(new)
        if not math.isclose(new, old, rel_tol=SAME_VALUE, abs_tol=0.0):
            point[key] = new
            changed = True
    return point if changed else None


def apply_remedy(params: dict, rule: Rule, space: dict[str, Param]) -> dict | None:
    """The trial's searched values with the rule's remedy applied (a full point of the space), or None when the
    remedy changes nothing (already at the bound, or none of its keys is searched)."""
    return _remedied(params, rule.remedy, space)


def prior_points(base: dict, space: dict[str, Param]) -> list[tuple[str, dict]]:
    """The warm start: the stable values, then one variant per guide remedy, in the guide's order. A variant
    the space cannot express (no key searched, or nothing moves) or that repeats an earlier point is left out."""
    rules = {rule.name: rule for rule in RULES}
    variants = [
        ("lr_down", rules["loss_oscillating"].remedy),
        ("lr_up", rules["loss_not_decreasing"].remedy),
        ("regularise", rules["fid_rising"].remedy),
        ("clip_harder", ((GRAD_CLIP, 0.5),)),          # the guide's "gradient explosion -> grad_clip 0.5" alone
        ("batch_down", rules["out_of_memory"].remedy),
    ]
    stable = {key: base[key] for key in space}
    points = [("stable", stable)]
    for name, remedy in variants:
        point = _remedied(stable, remedy, space)
        if point is None or any(point == seen for _, seen in points):
            continue
        if name == "batch_down":
            name = f"batch_{point[BATCH]}"             # batch_16 from the stable 32
        points.append((name, point))
    return points

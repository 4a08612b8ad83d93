"""The search space's vocabulary: one searched key (`Param`) and the values a sweep checks it at.

Shared by the sweep-file parser (cmdm/tuning/sweep_file.py), which builds the space, and the trial doctor
(cmdm/tuning/doctor.py), which moves points inside it; plain Python, so both stay light to import.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("loguniform", "uniform", "int", "choice")
MAX_CHECKED_INTS = 256     # an int range up to this many values is checked value by value
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)   # points checked in a continuous range


@dataclass(frozen=True)
class Param:
    """One searched key: loguniform/uniform [low, high], int [low, high] (inclusive) or choice [values]."""
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()

    def clip(self, value):
        """The nearest value this parameter allows (bounds clamped, ints rounded, nearest choice)."""
        if self.kind == "choice":
            if value in self.values:
                return value
            numeric = [v for v in self.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if isinstance(value, (int, float)) and numeric:
                return min(numeric, key=lambda v: abs(math.log(v / value)) if v > 0 and value > 0 else abs(v - value))
            return self.values[0]
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.kind == "int" else float(value)

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return value in self.values
        return self.low <= value <= self.high

    def describe(self) -> str:
        return f"{self.kind} {list(self.values)}" if self.kind == "choice" else f"{self.kind} [{self.low:g}, {self.high:g}]"


def check_points(p: Param) -> list:
    """The values of `p` a trial config is checked at before the sweep starts: each value of an `int` range
    (evenly spaced ones when it has more than MAX_CHECKED_INTS) and of a `choice`, the ends and QUANTILES of a
    continuous range (log-spaced for loguniform)."""
    if p.kind == "choice":
        return list(p.values)
    if p.kind == "int":
        lo, hi = int(p.low), int(p.high)
        if hi - lo < MAX_CHECKED_INTS:
            return list(range(lo, hi + 1))
        return sorted({lo + round((hi - lo) * i / (MAX_CHECKED_INTS - 1)) for i in range(MAX_CHECKED_INTS)})
    if p.kind == "loguniform":
        return [p.low] + [math.exp(math.log(p.low) + q * math.log(p.high / p.low)) for q in QUANTILES[1:-1]] + [p.high]
    return [p.low + q * (p.high - p.low) for q in QUANTILES]


def format_value(v) -> str:
    """A searched value as people read it in logs and tables: floats to 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def format_changes(changes: dict) -> str:
    """{'training.lr': [old, new]} -> 'lr 0.001 -> 0.000667': what a remedy moved, in lineage lines."""
    return ", ".join(f"{k.split('.')[-1]} {format_value(a)} -> {format_value(b)}" for k, (a, b) in changes.items())


def fork_source(fork: dict) -> str:
    """The parent's checkpoint file a continued line starts from: model_best.pt (kind "best") or last.pt."""
    return "model_best.pt" if fork.get("kind") == "best" else "last.pt"

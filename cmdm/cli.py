"""Small pieces the command lines share: argparse types that name the allowed values."""
from __future__ import annotations

import argparse


def number(kind, low, high=None):
    """argparse type: a number of `kind` (int or float) from low to high; a mistake names the allowed values
    (argparse prints it as `error: argument --flag: ...` with exit code 2)."""
    what = "a whole number" if kind is int else "a number"
    allowed = f"{what} >= {low}" if high is None else f"{what} from {low} to {high}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; allowed: {allowed}") from None
        if value != value or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {allowed}")
        return value
    parse.__name__ = kind.__name__
    return parse


def positive(kind=float):
    """argparse type: a number > 0 (a learning rate, a scale)."""
    what = "a whole number" if kind is int else "a number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}; allowed: {what} > 0") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {what} > 0")
        return value
    parse.__name__ = kind.__name__
    return parse

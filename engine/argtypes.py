"""argparse value types shared by every ``python -m engine`` command (stdlib only: each command line
builds the whole parser)."""

from __future__ import annotations

import argparse


def whole(lo: int, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi], with a message that says the range."""
    def parse(text: str) -> int:
        try:
            v = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            want = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {v}")
        return v
    parse.__name__ = "whole number"
    return parse


"""How the benchmarks decide a target from noisy rounds (overhead.py, realserver.py, paired.py
and context.py).

Each script resamples its rounds (a bootstrap, BOOTSTRAP_SAMPLES times) and recomputes the
ratio a target is about; the central INTERVAL of those ratios decides: a target is met only
when the whole interval is within it, missed only when the whole interval is above it, and
undecided when the interval straddles it. How the rounds are resampled is each script's
own: independently per configuration in-process, paired by round on the real servers.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

BOOTSTRAP_SAMPLES = 2000
INTERVAL = 0.90  # the central share of the resampled ratios a verdict is read from
MIN_ROUNDS_FOR_INTERVAL = 4  # fewer (e.g. a --quick run): no interval, the point ratio decides


def median_added(rounds: Sequence[float], bare: Sequence[float]) -> float:
    """The median over rounds of a configuration's figure minus the bare app's in the same
    round: load that moves from round to round moves both and cancels."""
    return float(statistics.median(a - b for a, b in zip(rounds, bare, strict=True)))


def central(ratios: list[float]) -> tuple[float, float]:
    """The low and high ends of the central INTERVAL of ``ratios``."""
    ordered = sorted(ratios)
    tail = (1 - INTERVAL) / 2
    last = len(ordered) - 1
    return ordered[int(tail * last)], ordered[int((1 - tail) * last)]


def side(interval: tuple[float, float], target: float) -> str:
    """'within' (the whole interval <= target), 'above' (all of it > target) or 'across'."""
    low, high = interval
    if high <= target:
        return "within"
    if low > target:
        return "above"
    return "across"


def describe(interval: tuple[float, float]) -> str:
    """'90% interval 0.30-0.61'."""
    low, high = interval
    return f"{INTERVAL:.0%} interval {low:.2f}-{high:.2f}"

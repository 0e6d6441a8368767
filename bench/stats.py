"""Medians and percentiles of repeated measurements (the machines are noisy)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
import time


@dataclass(frozen=True)
class Sample:
    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def pct(self, p: float) -> float:
        ordered = sorted(self.values)
        k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
        return ordered[k]

    @property
    def n(self) -> int:
        return len(self.values)

    def fmt(self, unit: str = "s", scale: float = 1.0, digits: int = 3) -> str:
        return (f"{self.median * scale:.{digits}f} {unit} (p99 {self.pct(99) * scale:.{digits}f}, "
                f"min {min(self.values) * scale:.{digits}f}, max {max(self.values) * scale:.{digits}f}, n={self.n})")


def repeat(fn: Callable[[], float], n: int) -> Sample:
    return Sample(tuple(fn() for _ in range(n)))


def timed(fn: Callable[[], object], n: int) -> Sample:
    def once() -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    return repeat(once, n)


def of(values: Sequence[float]) -> Sample:
    return Sample(tuple(values))


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    coverage: float         # the exact probability that such an interval holds the true median


def median_ci(values: Sequence[float], level: float = 0.95) -> Interval | None:
    """A distribution-free confidence interval for the median: the order statistics x(k) and x(n+1-k) with
    the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is still >= `level`. No assumption about
    the figures' distribution (a load time's is skewed) and no resampling, so the same figures always give
    the same interval. None when n is too small for any such interval (n < 6 at 95 %)."""
    ordered = sorted(values)
    n = len(ordered)
    best: Interval | None = None
    below = 0.0                                     # P(Binomial(n, 1/2) < k)
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2 ** n
        coverage = 1 - 2 * below
        if coverage < level:
            break
        best = Interval(ordered[k - 1], ordered[n - k], coverage)
    return best

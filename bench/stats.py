"""Medians and percentiles of repeated measurements (the machines are noisy)."""

from __future__ import annotations

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

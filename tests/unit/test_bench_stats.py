"""The benchmark's confidence interval for a median (bench/stats.py), on known order statistics and by
simulation: it is what decides the router section's verdicts, so it must be neither too narrow nor wrong."""

from __future__ import annotations

import random
import statistics

import pytest

from bench.stats import median_ci


def test_sixteen_figures_give_the_fourth_and_thirteenth():
    # P(Bin(16, 1/2) <= 3) = 697/65536, so (x4, x13) covers 1 - 2*697/65536 = 97.9 %; (x5, x12) only 92.3 %
    ci = median_ci([float(x) for x in range(16, 0, -1)])
    assert ci is not None
    assert (ci.low, ci.high) == (4.0, 13.0)
    assert ci.coverage == pytest.approx(1 - 2 * 697 / 65536)


def test_six_figures_give_min_and_max_and_five_give_none():
    ci = median_ci([3.0, 1.0, 2.0, 6.0, 5.0, 4.0])
    assert ci is not None and (ci.low, ci.high) == (1.0, 6.0)
    assert ci.coverage == pytest.approx(1 - 2 / 64)
    assert median_ci([1.0, 2.0, 3.0, 4.0, 5.0]) is None      # even min-max covers only 93.75 %
    assert median_ci([]) is None


def test_a_lower_level_gives_a_narrower_interval():
    values = [float(x) for x in range(1, 17)]
    wide, narrow = median_ci(values, 0.95), median_ci(values, 0.80)
    assert wide is not None and narrow is not None
    assert wide.low < narrow.low <= narrow.high < wide.high


@pytest.mark.parametrize("n", [6, 16, 31])
def test_it_holds_the_true_median_at_least_as_often_as_it_says(n):
    # skewed like a load time: a floor plus an exponential tail; the true median is floor + ln 2 * scale
    rng = random.Random(n)
    true = 0.84 + 0.05 * 0.6931471805599453
    trials, held, coverage = 4000, 0, 0.0
    for _ in range(trials):
        ci = median_ci([0.84 + rng.expovariate(1 / 0.05) for _ in range(n)])
        assert ci is not None
        held += ci.low <= true <= ci.high
        coverage = ci.coverage
    assert coverage >= 0.95
    # 4,000 trials: 3 standard errors of a 95 % proportion are about 1 point
    assert held / trials >= coverage - 0.011
    assert held / trials <= coverage + 0.011                   # exact, not merely conservative


def test_the_interval_holds_the_sample_median():
    rng = random.Random(7)
    for n in range(6, 40):
        values = [rng.random() for _ in range(n)]
        ci = median_ci(values)
        assert ci is not None and ci.low <= statistics.median(values) <= ci.high

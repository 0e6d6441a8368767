"""The router benchmark's judged figures (bench/router.py): what a start adds beyond its server's own CPU
time, and the ratio with the load's CPU evened out. Hand-computed rounds, so a wrong sign or a swapped
operand fails here, not silently in docs/BENCHMARKS.md."""

from __future__ import annotations

import pytest

from bench.router import beyond_load, evened_ratios, paired_ratios


def test_beyond_the_load_is_wall_less_cpu_per_round():
    assert beyond_load([1.30, 1.50], [1.25, 1.40]) == pytest.approx([0.05, 0.10])


def test_evening_out_keeps_what_each_adds_and_drops_the_loads_speed():
    # round 1: the router's child loaded in 1.00 s of CPU and answered at 1.04 s (it adds 0.04 s); our
    # server needed 1.20 s of CPU (a slow load on a noisy host) and answered at 1.26 s (we add 0.06 s)
    router, router_cpu = [1.04, 1.24], [1.00, 1.20]
    ours, ours_cpu = [1.26, 1.07], [1.20, 1.00]
    plain = paired_ratios(ours, router)
    assert plain == pytest.approx([1.26 / 1.04, 1.07 / 1.24])          # 1.21x and 0.86x: the loads' noise
    # evened: (1.00 + 0.06) / 1.04 and (1.20 + 0.07) / 1.24 - what we add against what the router adds
    assert evened_ratios(ours, ours_cpu, router, router_cpu) == pytest.approx([1.06 / 1.04, 1.27 / 1.24])


def test_a_round_without_a_router_figure_is_left_out():
    assert evened_ratios([1.0], [0.9], [0.0], [0.0]) == []
    assert paired_ratios([1.0, 2.0], [0.0, 1.0]) == [2.0]


def test_paired_differences_are_ours_less_the_routers_per_round():
    from bench.router import paired_differences

    assert paired_differences([1.30, 1.10], [1.20, 1.25]) == pytest.approx([0.10, -0.15])

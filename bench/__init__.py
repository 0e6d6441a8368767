"""Benchmarks: `make bench` measures, writes docs/BENCHMARKS.md."""

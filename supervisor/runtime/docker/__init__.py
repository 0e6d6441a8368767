"""llama-server in Docker containers: runtime.py (DockerRuntime, the Runtime protocol on the docker SDK)
and events.py (DockerEventStream, the engine's event stream as loop events)."""

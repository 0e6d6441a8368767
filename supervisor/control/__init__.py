"""The control plane: the Unix-socket HTTP API, its client, and the contracts the daemon implements."""

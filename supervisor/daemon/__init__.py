"""The daemon: one loop thread owning all state, its executor, the manifest watcher, the Controller."""

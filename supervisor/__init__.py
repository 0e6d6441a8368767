"""llama-supervisor: keeps local llama.cpp servers alive."""

__version__ = "0.1.0"

"""Command-line front ends: llama-supervisord and llama-supervisorctl."""

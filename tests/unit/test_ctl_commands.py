"""llama-supervisorctl's lazy command table (cli/ctl.py COMMAND_MODULES) says what each module registers."""

from __future__ import annotations

import importlib

import click

from supervisor.cli.ctl import COMMAND_MODULES


def test_each_module_registers_exactly_the_commands_the_lazy_table_names() -> None:
    for module, names in COMMAND_MODULES.items():
        group = click.Group()
        importlib.import_module(f"supervisor.cli.{module}").register(group)
        assert sorted(group.commands) == sorted(names), module

"""CLI commands for this area (see DESIGN.md "Interfaces")."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []

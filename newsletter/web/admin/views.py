"""The ``admin`` blueprint with every view module's routes attached."""

from __future__ import annotations

from flask import Blueprint


def admin_blueprint() -> Blueprint:
    """Import the view modules (each adds its routes to the blueprint) and return it."""
    from . import auth, bounces, dashboard, digest, issues, readers, settings, stories  # noqa: F401
    from .base import admin

    return admin

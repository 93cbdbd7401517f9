"""The bundle every entry point (CLI, web app, scheduler) works with.

Built once per process: settings, the database (migrated on first use), the
secret key (configured, or generated and stored once) and the token signer.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .config import Settings, load_settings
from .db import Database, resolve_secret_key
from .subscribers import Tokens

_SOURCE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"


def templates_dir(settings: Settings) -> Path:
    """NEWSLETTER_TEMPLATES_DIR, else the copy inside the wheel, else the source tree's."""
    if settings.templates_dir is not None:
        return settings.templates_dir
    if _PACKAGED_TEMPLATES.is_dir():
        return _PACKAGED_TEMPLATES
    return _SOURCE_TEMPLATES


@dataclass
class Context:
    settings: Settings
    db: Database

    @classmethod
    def open(cls, settings: Settings | None = None, migrate: bool = True) -> Context:
        settings = settings if settings is not None else load_settings()
        ctx = cls(settings=settings, db=Database.open(settings, migrate=migrate))
        if migrate:
            # Resolve (and, the first time, generate and store) the key now, in its own
            # short transaction: doing it lazily inside a caller's write transaction
            # would wait on our own SQLite write lock.
            _ = ctx.secret_key
        return ctx

    @cached_property
    def secret_key(self) -> str:
        return resolve_secret_key(self.db, self.settings)

    @cached_property
    def tokens(self) -> Tokens:
        return Tokens(self.secret_key)

    @property
    def templates_dir(self) -> Path:
        return templates_dir(self.settings)

    def close(self) -> None:
        self.db.dispose()

"""``/admin/settings``: the effective configuration (secrets masked), DNS records, snippet.

Read-only on purpose: settings come from the environment or ``.env`` of the
deployment, and a web form that changed them would be a second source of truth.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import urlsplit, urlunsplit

from ...config import PREFIX, Settings
from .base import admin, ctx, page
from .hooks import dkim_records, footer_snippet

_SECRET = re.compile(r"(secret|password|token|key$|signing|private)", re.IGNORECASE)
_NOT_SECRET = {"dkim_key_file", "dkim_ed25519_key_file"}  # paths, not keys


def mask_url(value: str) -> str:
    """A URL with its password replaced by ``****`` (user and host stay visible)."""
    out = []
    for part in value.split(","):
        parts = urlsplit(part.strip())
        if parts.password:
            netloc = f"{parts.username}:****@{parts.hostname}"
            if parts.port:
                netloc += f":{parts.port}"
            part = urlunsplit(parts._replace(netloc=netloc))
        out.append(part.strip())
    return ", ".join(out)


def effective(settings: Settings) -> list[tuple[str, str]]:
    rows = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None or value == "" or value == ():
            shown = "(not set)"
        elif _SECRET.search(field.name) and field.name not in _NOT_SECRET:
            shown = "**** (set)"
        elif isinstance(value, tuple):
            shown = ", ".join(mask_url(str(v)) for v in value)
        else:
            shown = mask_url(str(value)) if "://" in str(value) else str(value)
        rows.append((PREFIX + field.name.upper(), shown))
    return rows


def dns_records(settings: Settings) -> list[tuple[str, str, str]]:
    """(what, name, TXT value) to publish for the From domain."""
    domain = settings.sender_domain
    relay = ""
    if settings.smtp_url:
        host = urlsplit(settings.smtp_url.split(",")[0].strip()).hostname or ""
        relay = f" (and your relay {host}'s SPF include, see its documentation)" if host else ""
    records = [("SPF" + relay, domain, "v=spf1 mx a ~all")]
    records += [("DKIM", name, value) for name, value in dkim_records(settings)]
    records.append(
        ("DMARC", f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}")
    )
    return records


@admin.get("/settings")
def settings() -> tuple[str, int]:
    current = ctx().settings
    return page(
        "settings.html",
        rows=effective(current),
        dns=dns_records(current),
        dkim_configured=bool(current.dkim_key_file or current.dkim_ed25519_key_file),
        snippet=footer_snippet(current),
    )

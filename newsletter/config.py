"""Settings: one frozen object built from the environment and an optional ``.env``.

Every setting is validated when it is loaded so that a typo in a deployment is a
one-line error naming the variable (``ConfigError``), not a traceback deep inside a
send.  The environment wins over ``.env`` (python-dotenv's ``override=False``), so
an operator can always override a file that ships with the deployment.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import getaddresses, parseaddr
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dotenv import dotenv_values

PREFIX = "NEWSLETTER_"
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")


class ConfigError(ValueError):
    """A setting is missing or malformed; ``str()`` is a one-line message naming it."""


class InvalidLimit(ValueError):
    """A rate-limit setting that is not ``COUNT/PERIOD`` (e.g. ``10/10m``)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_limit(text: str) -> tuple[int, float]:
    """``"10/10m"`` -> (10, 600.0): at most COUNT hits per PERIOD (s, m, h or d)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*", text)
    if not match:
        raise InvalidLimit(f"expected COUNT/PERIOD such as 10/10m or 3/1h, got {text!r}")
    count = int(match.group(1))
    period = int(match.group(2) or 1) * _UNITS[match.group(3)]
    if count < 1 or period < 1:
        raise InvalidLimit(f"count and period must be positive, got {text!r}")
    return count, float(period)


@dataclass(frozen=True)
class Settings:
    """Everything the running system may be configured with; defaults run a demo."""

    database_url: str = "sqlite:///subscribers.db"
    smtp_url: str | None = None
    outbox: Path = Path("outbox")
    from_name: str = "The Daily Digest"
    from_email: str = "newsletter@localhost"
    site_name: str = "The Daily Digest"
    base_url: str = "http://localhost:8000"
    secret_key: str | None = None
    digest_cron: str = "0 7 * * *"
    timezone: str = "UTC"
    feeds: tuple[str, ...] = ()
    feed_poll_minutes: int = 15
    feed_timeout: float = 30.0
    feeds_allow_private: bool | tuple[str, ...] = False  # True, or allowed networks
    max_stories: int = 10
    send_rate: float = 0.0
    smtp_connections: int = 4
    smtp_timeout: float = 30.0
    postal_address: str = "Set NEWSLETTER_POSTAL_ADDRESS to your postal address"
    dkim_key_file: Path | None = None
    dkim_selector: str | None = None
    dkim_ed25519_key_file: Path | None = None
    dkim_ed25519_selector: str | None = None
    daily_limit: int = 0
    templates_dir: Path | None = None
    misfire_grace_seconds: int = 3600
    max_attempts: int = 5
    batch_size: int = 500
    retry_base_seconds: float = 2.0
    lease_seconds: float = 60.0
    scheduler_lease_seconds: float = 60.0
    digest_cron_second: str = "0"
    smtp_ca_file: Path | None = None
    article_base_url: str | None = None
    web_rate_ip: str = "20/10m"
    web_rate_address: str = "3/1h"
    language: str = "en"
    digest_note: str | None = None
    allowed_origins: tuple[str, ...] = ()
    weekly_cron: str = "0 8 * * 0"
    weekly_max_stories: int = 12
    # Not settings: which placeholder defaults are still in force (``first_run_problems``).
    bounce_address: str | None = None
    bounce_mailbox: str | None = None
    bounce_poll_minutes: int = 10
    soft_bounce_limit: int = 3
    mailgun_signing_key: str | None = None
    postmark_webhook_token: str | None = None
    sendgrid_public_key: str | None = None
    ses_topic_arns: tuple[str, ...] = ()
    # Not settings: which placeholder defaults are still in force (``first_run_problems``).
    unset: frozenset[str] = field(default=frozenset(), compare=False, metadata={"setting": False})

    @property
    def from_header(self) -> str:
        """The From value as ``Name <addr>`` (encoding is message.py's job)."""
        return str(Address(display_name=self.from_name, addr_spec=self.from_email))

    @property
    def smtp_urls(self) -> tuple[str, ...]:
        """NEWSLETTER_SMTP_URL's relays in the order they are tried (empty: Maildir)."""
        if not self.smtp_url:
            return ()
        return tuple(u.strip() for u in self.smtp_url.split(",") if u.strip())

    @property
    def sender_domain(self) -> str:
        """Domain used for Message-IDs and List-Id: the From address's domain."""
        return self.from_email.rpartition("@")[2]

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# Defaults that are placeholders: fine for the demo and the outbox, embarrassing in
# 5,000 real inboxes (links to localhost, a footer asking for an address).
PLACEHOLDER_SETTINGS = ("BASE_URL", "POSTAL_ADDRESS")


def first_run_problems(settings: Settings) -> list[str]:
    """One line per placeholder setting that must be set before mailing real people."""
    why = {
        "BASE_URL": "the public URL of the web app, used in every unsubscribe and archive link",
        "POSTAL_ADDRESS": "the postal address the law (CAN-SPAM and others) requires in bulk mail",
    }
    return [
        f"{PREFIX}{name} is not set: set it to {why[name]}"
        for name in PLACEHOLDER_SETTINGS
        if name in settings.unset
    ]


def _language(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*", value):
        raise ConfigError(
            f"{PREFIX}LANGUAGE: expected a language tag such as en or es-ES, got {value!r}"
        )
    return value


def _no_control(name: str, value: str) -> str:
    if _CONTROL.search(value):
        raise ConfigError(f"{name}: control characters (CR, LF, ...) are not allowed")
    return value


def _int(name: str, value: str, minimum: int = 0, maximum: int = 2**31 - 1) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {number}")
    if number > maximum:
        raise ConfigError(f"{name}: must be at most {maximum}, got {number}")
    return number


def _float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if number < 0 or number != number or number == float("inf"):
        raise ConfigError(f"{name}: must be a finite number >= 0, got {value!r}")
    return number


def _seconds(name: str, value: str) -> float:
    number = _float(name, value)
    if not 0.01 <= number <= 86_400:
        raise ConfigError(f"{name}: seconds between 0.01 and 86400, got {value!r}")
    return number


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected 1/true/yes/on or 0/false/no/off, got {value!r}")


def _allow_private(value: str) -> bool | tuple[str, ...]:
    """1/0 (any private address / none), or the networks feeds may use ("10.1.2.0/24, ::1")."""
    name = f"{PREFIX}FEEDS_ALLOW_PRIVATE"
    if value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return _flag(name, value)
    import ipaddress

    networks = tuple(item for item in re.split(r"[\s,]+", value) if item)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"{name}: expected 1, 0 or a list of IP networks, got {network!r}"
            ) from None
    return networks


def _cron_second(value: str) -> str:
    """The optional seconds field of the digest trigger (demos and tests: ``*/2``)."""
    try:
        from apscheduler.triggers.cron import CronTrigger

        CronTrigger(second=value)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}DIGEST_CRON_SECOND: {exc}") from None
    return value


def _http_url(name: str, value: str, base: bool = False) -> str:
    _no_control(name, value)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{name}: not a valid URL ({exc}): {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
        raise ConfigError(f"{name}: expected an http(s) URL, got {value!r}")
    if base and (parts.query or parts.fragment or "?" in value or "#" in value):
        # Paths are appended to a base URL ("/unsubscribe/<token>"): after a query or
        # a fragment they would silently break every link in every email.
        raise ConfigError(f"{name}: a base URL cannot have a ?query or #fragment: {value!r}")
    return value.rstrip("/")


def _from(value: str) -> tuple[str, str]:
    _no_control(f"{PREFIX}FROM", value)
    # Python 3.11.7's parseaddr has no strict mode: refuse lists explicitly.
    if len(getaddresses([value])) != 1:
        raise ConfigError(f"{PREFIX}FROM: expected exactly one address, got {value!r}")
    name, addr = parseaddr(value)
    if not addr or "@" not in addr or addr.count("@") != 1 or " " in addr:
        raise ConfigError(
            f"{PREFIX}FROM: expected 'Name <address@example.com>' or an address, got {value!r}"
        )
    local, _, domain = addr.partition("@")
    if not local or ("." not in domain and domain != "localhost"):
        raise ConfigError(f"{PREFIX}FROM: {addr!r} is not a valid address")
    # The same check subscribers' addresses get (no DNS; ASCII local part, as it goes
    # out as the envelope sender on relays without SMTPUTF8).  "localhost" is the
    # demo default and a special-use name email-validator refuses: check its local part.
    from email_validator import EmailNotValidError, validate_email

    probe = f"{local}@example.com" if domain.lower() == "localhost" else addr
    try:
        validate_email(probe, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ConfigError(f"{PREFIX}FROM: {addr!r} is not a valid address: {exc}") from None
    return name, addr


def _database_url(value: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(
            f"{PREFIX}DATABASE_URL: expected a database URL such as "
            "sqlite:///subscribers.db, got a value SQLAlchemy cannot parse"
        ) from None
    if url.get_backend_name() == "sqlite" and (url.database or ":memory:") == ":memory:":
        # Every connection would get its own empty database (no tables, no list).
        raise ConfigError(
            f"{PREFIX}DATABASE_URL: an in-memory SQLite database cannot be shared between "
            "connections; give a file, e.g. sqlite:///subscribers.db"
        )
    return value


def _smtp_url(value: str) -> str:
    """One relay URL, or several comma-separated (tried in order)."""
    urls = [u.strip() for u in value.split(",")]
    if any(not u for u in urls):
        raise ConfigError(f"{PREFIX}SMTP_URL: an empty entry in the comma-separated relay list")
    for url in urls:
        _one_smtp_url(url)
    return ",".join(urls)


def _one_smtp_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}SMTP_URL: not a valid URL ({exc})") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError(
            f"{PREFIX}SMTP_URL: expected smtp://user:pass@host:587 or smtps://host:465, "
            f"got scheme {parts.scheme!r}"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(f"{PREFIX}SMTP_URL: the port is not a number 0-65535") from None
    return value


_CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 = sun


def _crontab_day(token: str) -> int:
    if token.isdigit():
        number = int(token)
        if not 0 <= number <= 7:
            raise ValueError(f"weekday {number} is out of range 0-7")
        return number
    try:
        return _CRONTAB_DAYS.index(token)
    except ValueError:
        raise ValueError(f"unknown weekday {token!r}") from None


def crontab_weekdays(field: str) -> str:
    """Translate a crontab day-of-week field (0 or 7 = Sunday) into APScheduler day names.

    The field is expanded to a set of days (lists, ranges, ``*/n`` steps) and written
    back as names in APScheduler's order, e.g. ``1-5`` -> ``mon,tue,wed,thu,fri`` and
    ``0,6`` -> ``sat,sun``; raises ValueError on anything that is not a weekday.
    """
    days: set[int] = set()
    for part in field.lower().split(","):
        span, slash, step_text = part.partition("/")
        if slash and not step_text.isdigit():
            raise ValueError(f"bad step in weekday field {field!r}")
        step = int(step_text) if slash else 1
        if step < 1:
            raise ValueError(f"bad step in weekday field {field!r}")
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            first, _, last = span.partition("-")
            low, high = _crontab_day(first), _crontab_day(last)
        else:
            low = _crontab_day(span)
            high = 7 if slash else low
        if low > high:
            raise ValueError(f"backwards weekday range in {field!r}")
        days.update(day % 7 for day in range(low, high + 1, step))
    if len(days) == 7:
        return "*"
    return ",".join(_CRONTAB_DAYS[day] for day in sorted(days, key=lambda d: (d - 1) % 7))


def _cron(value: str, key: str = "DIGEST_CRON") -> str:
    fields = value.split()
    if len(fields) != 5:
        raise ConfigError(
            f"{PREFIX}{key}: expected 5 fields 'minute hour day month weekday', got {value!r}"
        )
    try:
        from apscheduler.triggers.cron import CronTrigger

        # The digest trigger reads the weekday field the crontab way (0 or 7 = Sunday),
        # not APScheduler's (0 = Monday, no 7): validate it the way it will be used.
        minute, hour, day, month, weekday = fields
        CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=crontab_weekdays(weekday)
        )
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{key}: {exc}") from None
    return value


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, lower-cased, default port dropped."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    scheme = parts.scheme.lower()
    default = 443 if scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


def _origins(value: str) -> tuple[str, ...]:
    """NEWSLETTER_ALLOWED_ORIGINS: the site's origins, exactly scheme://host[:port]."""
    name = f"{PREFIX}ALLOWED_ORIGINS"
    _no_control(name, value)
    origins: list[str] = []
    for item in (i.strip() for i in re.split(r"[\s,]+", value)):
        if not item:
            continue
        origin = origin_of(item)
        if origin is None or not _bare(item):
            raise ConfigError(
                f"{name}: expected origins like https://www.site.example, got {item!r}"
            )
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def _bare(item: str) -> bool:
    """``item`` is only scheme://host[:port] (no path, query, fragment or user)."""
    parts = urlsplit(item.rstrip("/"))
    return not (parts.path or parts.query or parts.fragment or parts.username or parts.password)


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{PREFIX}TIMEZONE: unknown time zone {value!r}") from None
    return value


def _feeds(value: str) -> tuple[str, ...]:
    feeds = tuple(item.strip() for item in re.split(r"[\s,]+", value) if item.strip())
    for feed in feeds:
        _http_url(f"{PREFIX}FEEDS", feed)
        if len(feed) > 2048:  # the feed_states key column; feeds.http_url's limit too
            raise ConfigError(f"{PREFIX}FEEDS: a URL longer than 2048 characters: {feed[:60]}…")
    return feeds


def _dkim_ed25519(get: Callable[[str], str | None], kwargs: dict[str, object]) -> None:
    """NEWSLETTER_DKIM_ED25519_KEY_FILE and _SELECTOR: both or neither (RFC 8463 key)."""
    key_file, selector = get("DKIM_ED25519_KEY_FILE"), get("DKIM_ED25519_SELECTOR")
    if (key_file is None) != (selector is None):
        given = "SELECTOR" if selector is not None else "KEY_FILE"
        raise ConfigError(
            f"{PREFIX}DKIM_ED25519_{given}: {PREFIX}DKIM_ED25519_KEY_FILE and _SELECTOR "
            "must be set together"
        )
    if key_file is None or selector is None:
        return
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", selector):
        raise ConfigError(f"{PREFIX}DKIM_ED25519_SELECTOR: not a DNS label: {selector!r}")
    if not Path(key_file).is_file():
        raise ConfigError(f"{PREFIX}DKIM_ED25519_KEY_FILE: no such file {key_file}")
    if selector == kwargs.get("dkim_selector"):
        raise ConfigError(
            f"{PREFIX}DKIM_ED25519_SELECTOR: must differ from {PREFIX}DKIM_SELECTOR "
            "(each key is published under its own selector)"
        )
    kwargs["dkim_ed25519_key_file"] = Path(key_file)
    kwargs["dkim_ed25519_selector"] = selector


def _raw_values(
    environ: Mapping[str, str] | None, dotenv_path: str | os.PathLike[str] | None
) -> dict[str, str]:
    """NEWSLETTER_* names (without the prefix) from ``.env``, overridden by the environment."""
    values: dict[str, str] = {}
    if dotenv_path is not None and Path(dotenv_path).is_file():
        values.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    return {k[len(PREFIX) :]: v for k, v in values.items() if k.startswith(PREFIX)}


def known_names() -> frozenset[str]:
    """Every NEWSLETTER_* name the loader reads (found by watching it read an empty env)."""
    seen: set[str] = set()
    _load(_Recorder(seen))
    return frozenset(PREFIX + name for name in seen)


class _Recorder(dict[str, str]):
    """An empty mapping that remembers every key asked for."""

    def __init__(self, seen: set[str]) -> None:
        super().__init__()
        self.seen = seen

    def get(self, key: str, default: object = None) -> None:  # type: ignore[override]
        self.seen.add(key)
        return None


def unknown_settings(
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> list[str]:
    """One warning per NEWSLETTER_* name nobody reads, with the closest known name.

    A misspelt setting (``NEWSLETTER_SMTP_ULR``) would otherwise be ignored in
    silence and the default used: the outbox instead of the relay.
    """
    known = known_names()
    out = []
    for name in sorted(PREFIX + key for key in _raw_values(environ, dotenv_path)):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        out.append(f"unknown setting {name} is ignored{hint}")
    return out


def load_settings(
    environ: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike[str] | None = ".env",
) -> Settings:
    """Build Settings from ``environ`` (default: ``os.environ``) over ``.env``.

    Pass ``dotenv_path=None`` to ignore any ``.env`` file (tests do).
    """
    return _load(_raw_values(environ, dotenv_path))


def _load(env: Mapping[str, str]) -> Settings:
    """Settings from prefix-less names; every name read goes through ``get``."""

    def get(key: str) -> str | None:
        raw = env.get(key)
        if raw is None:
            return None
        raw = raw.strip()
        return raw or None

    kwargs: dict[str, object] = {}
    if (v := get("DATABASE_URL")) is not None:
        kwargs["database_url"] = _database_url(v)
    if (v := get("SMTP_URL")) is not None:
        kwargs["smtp_url"] = _smtp_url(v)
    if (v := get("OUTBOX")) is not None:
        kwargs["outbox"] = Path(v)
    if (v := get("FROM")) is not None:
        name, addr = _from(v)
        kwargs["from_email"] = addr
        if name:
            kwargs["from_name"] = name
    if (v := get("SITE_NAME")) is not None:
        kwargs["site_name"] = _no_control(f"{PREFIX}SITE_NAME", v)
        kwargs.setdefault("from_name", kwargs["site_name"])
    if (v := get("BASE_URL")) is not None:
        kwargs["base_url"] = _http_url(f"{PREFIX}BASE_URL", v, base=True)
    if (v := get("SECRET_KEY")) is not None:
        if len(v) < 16:
            raise ConfigError(f"{PREFIX}SECRET_KEY: use at least 16 characters")
        kwargs["secret_key"] = v
    if (v := get("DIGEST_CRON")) is not None:
        kwargs["digest_cron"] = _cron(v)
    if (v := get("TIMEZONE")) is not None:
        kwargs["timezone"] = _timezone(v)
    if (v := get("FEEDS")) is not None:
        kwargs["feeds"] = _feeds(v)
    if (v := get("ALLOWED_ORIGINS")) is not None:
        kwargs["allowed_origins"] = _origins(v)
    if (v := get("WEEKLY_CRON")) is not None:
        kwargs["weekly_cron"] = _cron(v, "WEEKLY_CRON")
    return _load_rest(get, kwargs)


def _load_rest(get: Callable[[str], str | None], kwargs: dict[str, object]) -> Settings:
    """The second half of :func:`load_settings`: numbers, files, DKIM, limits."""
    for key, attr, minimum, maximum in (
        ("FEED_POLL_MINUTES", "feed_poll_minutes", 1, 7 * 24 * 60),  # a week
        ("MAX_STORIES", "max_stories", 1, 10_000),
        ("WEEKLY_MAX_STORIES", "weekly_max_stories", 1, 10_000),
        ("SMTP_CONNECTIONS", "smtp_connections", 1, 1_000),
        ("MISFIRE_GRACE_SECONDS", "misfire_grace_seconds", 1, 86_400),  # a daily digest's day
        ("MAX_ATTEMPTS", "max_attempts", 1, 1_000),
        ("BATCH_SIZE", "batch_size", 1, 1_000_000),
    ):
        if (v := get(key)) is not None:
            kwargs[attr] = _int(PREFIX + key, v, minimum, maximum)
    if (v := get("FEED_TIMEOUT")) is not None:
        kwargs["feed_timeout"] = _seconds(f"{PREFIX}FEED_TIMEOUT", v)
    if (v := get("FEEDS_ALLOW_PRIVATE")) is not None:
        kwargs["feeds_allow_private"] = _allow_private(v)
    if (v := get("SEND_RATE")) is not None:
        kwargs["send_rate"] = _float(f"{PREFIX}SEND_RATE", v)
    if (v := get("SMTP_TIMEOUT")) is not None:
        kwargs["smtp_timeout"] = _float(f"{PREFIX}SMTP_TIMEOUT", v) or 30.0
    if (v := get("POSTAL_ADDRESS")) is not None:
        kwargs["postal_address"] = _no_control(f"{PREFIX}POSTAL_ADDRESS", v)
    if (v := get("DKIM_KEY_FILE")) is not None:
        kwargs["dkim_key_file"] = Path(v)
    if (v := get("DKIM_SELECTOR")) is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ConfigError(f"{PREFIX}DKIM_SELECTOR: not a DNS label: {v!r}")
        kwargs["dkim_selector"] = v
    if ("dkim_key_file" in kwargs) != ("dkim_selector" in kwargs):
        raise ConfigError(f"{PREFIX}DKIM_KEY_FILE and {PREFIX}DKIM_SELECTOR must be set together")
    if "dkim_key_file" in kwargs and not Path(str(kwargs["dkim_key_file"])).is_file():
        raise ConfigError(f"{PREFIX}DKIM_KEY_FILE: no such file {kwargs['dkim_key_file']}")
    _dkim_ed25519(get, kwargs)
    if (v := get("DAILY_LIMIT")) is not None:
        kwargs["daily_limit"] = _int(f"{PREFIX}DAILY_LIMIT", v, 0, 100_000_000)
    if (v := get("TEMPLATES_DIR")) is not None:
        if not Path(v).is_dir():
            raise ConfigError(f"{PREFIX}TEMPLATES_DIR: no such directory {v}")
        kwargs["templates_dir"] = Path(v)
    for key, attr in (
        ("RETRY_BASE_SECONDS", "retry_base_seconds"),
        ("LEASE_SECONDS", "lease_seconds"),
    ):
        if (v := get(key)) is not None:
            kwargs[attr] = _seconds(PREFIX + key, v)
    if (v := get("SCHEDULER_LEASE_TTL")) is not None:
        kwargs["scheduler_lease_seconds"] = _seconds(f"{PREFIX}SCHEDULER_LEASE_TTL", v)
    if (v := get("DIGEST_CRON_SECOND")) is not None:
        kwargs["digest_cron_second"] = _cron_second(v)
    if (v := get("SMTP_CA_FILE")) is not None:
        if not Path(v).is_file():
            raise ConfigError(f"{PREFIX}SMTP_CA_FILE: no such file {v}")
        kwargs["smtp_ca_file"] = Path(v)
    if (v := get("ARTICLE_BASE_URL")) is not None:
        kwargs["article_base_url"] = _http_url(f"{PREFIX}ARTICLE_BASE_URL", v, base=True)
    for key, attr in (("WEB_RATE_IP", "web_rate_ip"), ("WEB_RATE_ADDRESS", "web_rate_address")):
        if (v := get(key)) is not None:
            try:
                parse_limit(v)
            except InvalidLimit as exc:
                raise ConfigError(f"{PREFIX}{key}: {exc}") from None
            kwargs[attr] = v
    if (v := get("LANGUAGE")) is not None:
        kwargs["language"] = _language(v)
    if (v := get("DIGEST_NOTE")) is not None:
        kwargs["digest_note"] = _no_control(f"{PREFIX}DIGEST_NOTE", v)
    _bounce_settings(get, kwargs)
    kwargs["unset"] = frozenset(name for name in PLACEHOLDER_SETTINGS if name.lower() not in kwargs)
    return Settings(**kwargs)  # type: ignore[arg-type]


_SNS_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}")


def _bounce_settings(get: Callable[[str], str | None], kwargs: dict[str, object]) -> None:
    """Bounce handling (issue 11): the VERP address, the mailbox, provider secrets."""
    if (v := get("BOUNCE_ADDRESS")) is not None:
        name = f"{PREFIX}BOUNCE_ADDRESS"
        _no_control(name, v)
        local, at, domain = v.rpartition("@")
        if not (at and local and "." in domain and v.isascii()) or any(c in v for c in " <>+,"):
            raise ConfigError(f"{name}: expected a plain address such as bounces@example.org")
        kwargs["bounce_address"] = v
    if (v := get("BOUNCE_MAILBOX")) is not None:
        kwargs["bounce_mailbox"] = _no_control(f"{PREFIX}BOUNCE_MAILBOX", v)
    if (v := get("BOUNCE_POLL_MINUTES")) is not None:
        kwargs["bounce_poll_minutes"] = _int(f"{PREFIX}BOUNCE_POLL_MINUTES", v, 1, 7 * 24 * 60)
    if (v := get("SOFT_BOUNCE_LIMIT")) is not None:
        kwargs["soft_bounce_limit"] = _int(f"{PREFIX}SOFT_BOUNCE_LIMIT", v, 1, 1000)
    for key in ("MAILGUN_SIGNING_KEY", "POSTMARK_WEBHOOK_TOKEN", "SENDGRID_PUBLIC_KEY"):
        if (v := get(key)) is not None:
            kwargs[key.lower()] = _no_control(PREFIX + key, v)
    if (v := get("SES_TOPIC_ARNS")) is not None:
        arns = tuple(a for a in re.split(r"[\s,]+", v) if a)
        for arn in arns:
            if not _SNS_ARN.fullmatch(arn):
                raise ConfigError(f"{PREFIX}SES_TOPIC_ARNS: not an SNS topic ARN: {arn!r}")
        kwargs["ses_topic_arns"] = arns

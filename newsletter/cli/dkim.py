"""``newsletter dkim keygen [--type rsa|ed25519] [--bits N] [-o FILE]`` and ``dkim record``.

Neither opens the database: a key and its DNS record are prepared before the first
send.  ``keygen`` writes the key 0600 and never overwrites a file; ``record`` prints,
for every configured key, the TXT record to publish at
``<selector>._domainkey.<From domain>``, the value split into strings of at most 255
characters as DNS requires (RFC 1035 character-strings; receivers join them, RFC 6376
3.6.2.2).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..config import ConfigError, Settings, load_settings
from .state import SettingsError

TXT_CHUNK = 255  # one <character-string> in a TXT record


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None


def txt_strings(value: str) -> list[str]:
    """The record value as DNS character-strings of at most 255 octets each."""
    return [value[i : i + TXT_CHUNK] for i in range(0, len(value), TXT_CHUNK)] or [""]


@click.group("dkim")
def dkim_group() -> None:
    """DKIM keys: make one, and print the DNS record to publish."""


@dkim_group.command("keygen")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["rsa", "ed25519"]),
    default="rsa",
    show_default=True,
    help="rsa (every receiver) or ed25519 (RFC 8463, a second signature beside rsa).",
)
@click.option("--bits", type=click.IntRange(1024, 4096), help="RSA key size (default 2048).")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Key file to write (default dkim.pem, or dkim-ed25519.pem); never overwritten.",
)
def keygen(kind: str, bits: int | None, output: Path | None) -> None:
    """Write a new private key (PKCS#8 PEM, mode 0600) and say how to use it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if bits is not None and kind != "rsa":
        raise click.BadParameter("--bits is for RSA keys", param_hint="--bits")
    path = output or Path("dkim.pem" if kind == "rsa" else "dkim-ed25519.pem")
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits or 2048)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{path} exists: not overwritten (choose another -o)") from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)  # whatever the umask
    prefix = "NEWSLETTER_DKIM_ED25519_" if kind == "ed25519" else "NEWSLETTER_DKIM_"
    size = f"RSA-{bits or 2048}" if kind == "rsa" else "Ed25519"
    click.echo(f"Wrote {path} ({size}, mode 0600). Set:")
    click.echo(f"  {prefix}KEY_FILE={path.resolve()}")
    click.echo(f"  {prefix}SELECTOR=<a selector, e.g. news{'e' if kind == 'ed25519' else ''}1>")
    click.echo("then run 'newsletter dkim record' and publish the TXT record it prints.")


@dkim_group.command("record")
def record() -> None:
    """Print the DNS TXT record to publish for each configured DKIM key."""
    from ..mail import DkimKeyError, DkimSigner

    settings = _settings()
    try:
        signer = DkimSigner.from_settings(settings)
    except DkimKeyError as exc:
        raise SettingsError(str(exc)) from None
    if signer is None:
        raise click.ClickException(
            "no DKIM key is configured: set NEWSLETTER_DKIM_KEY_FILE and "
            "NEWSLETTER_DKIM_SELECTOR ('newsletter dkim keygen' makes a key)"
        )
    for warning in signer.warnings:
        click.echo(f"warning: {warning}", err=True)
    for key in signer.keys:
        label = f"RSA, {key.bits} bits" if key.algorithm == "rsa-sha256" else "Ed25519"
        strings = " ".join(f'"{part}"' for part in txt_strings(key.record_value))
        click.echo(f"; {key.algorithm} ({label})")
        click.echo(f"Name:  {key.record_name}")
        click.echo("Type:  TXT")
        click.echo(f"Value: {strings}")
        click.echo(f"Zone:  {key.record_name}. 3600 IN TXT ( {strings} )")
        click.echo()


COMMANDS: list[click.Command] = [dkim_group]

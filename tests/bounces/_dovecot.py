"""A real Dovecot (IMAP, IMAPS, POP3, POP3S) on 127.0.0.1 free ports, for one test.

Minimal configuration in a temporary folder: a passwd-file user, Maildir storage,
a self-signed certificate made with openssl.  Skipped (with the reason) when
dovecot is not installed; a failure in CI (``CI=true``), where .ci/run installs it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

USER = "bounces"
PASSWORD = "s3cret pass/with@odd%chars"  # URL-quoted in the source URL


@dataclass
class Dovecot:
    root: Path
    imap: int
    imaps: int
    pop3: int
    pop3s: int
    cert: Path
    process: subprocess.Popen[bytes]

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / USER / "Maildir"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def url(self, scheme: str, folder: str = "INBOX") -> str:
        from urllib.parse import quote

        port = {"imap": self.imap, "imaps": self.imaps, "pop3": self.pop3, "pop3s": self.pop3s}
        return f"{scheme}://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{port[scheme]}/{folder}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def start_dovecot(root: Path) -> Dovecot:
    binary = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if binary is None or not Path("/usr/lib/dovecot/imap").exists():
        _missing("dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)")
    assert binary is not None
    for sub in ("run", "mail", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    if os.getuid() == 0:  # mail processes may not run as root: hand the store to nobody
        nobody = pwd.getpwnam("nobody")
        uid, gid, users = nobody.pw_uid, nobody.pw_gid, ""
        os.chown(root / "mail", uid, gid)
    else:  # an unprivileged dovecot runs everything as us
        uid, gid = os.getuid(), os.getgid()
        me = pwd.getpwuid(uid).pw_name
        users = f"default_internal_user = {me}\ndefault_login_user = {me}\n"
    ports = [free_port() for _ in range(4)]
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}::::\n")
    listeners = ""
    for service, names in (("imap-login", ("imap", "imaps")), ("pop3-login", ("pop3", "pop3s"))):
        plain, secure = names
        p1, p2 = (ports[0], ports[1]) if service == "imap-login" else (ports[2], ports[3])
        listeners += (
            f"service {service} {{\n  chroot =\n"
            f"  inet_listener {plain} {{\n    address = 127.0.0.1\n    port = {p1}\n  }}\n"
            f"  inet_listener {secure} {{\n    address = 127.0.0.1\n    port = {p2}\n"
            "    ssl = yes\n  }\n}\n"
        )
    conf = root / "dovecot.conf"
    conf.write_text(
        f"base_dir = {root}/run\nstate_dir = {root}/run\nlog_path = {root}/log/dovecot.log\n"
        "protocols = imap pop3\nlisten = 127.0.0.1\nssl = yes\n"
        f"ssl_cert = <{cert}\nssl_key = <{key}\n"
        "disable_plaintext_auth = no\nauth_mechanisms = plain login\n"
        f"mail_location = maildir:{root}/mail/%u/Maildir\nfirst_valid_uid = 1\n"
        f"{users}"
        f"passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN {root}/passwd\n}}\n"
        f"userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={root}/mail/%u\n}}\n"
        "service anvil {\n  chroot =\n}\n"
        f"{listeners}"
        "protocol pop3 {\n  pop3_uidl_format = %08Xu%08Xv\n}\n"
    )
    process = subprocess.Popen(
        [binary, "-F", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    server = Dovecot(root, ports[0], ports[1], ports[2], ports[3], cert, process)
    deadline = time.monotonic() + 60
    while True:  # readiness, not a time bound: wait until all four ports answer
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            pytest.fail(f"dovecot exited: {output}")
        try:
            for port in ports:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                pytest.fail("dovecot did not start listening")
            time.sleep(0.1)

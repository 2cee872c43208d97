"""The local admin token: admin access on a default install with no token set up.

With ``auth.mode: none``, ``tripwire serve`` keeps a random token in a file only its user can
read (``auth.local_admin_file``, mode 0600), made on the first start and reused after, so a
browser session stays signed in across restarts. ``tripwire tasks`` and ``tripwire console``
read it from there; the admin API takes it like an admin JWT without a tenant.

Why a file rather than an admin API open on loopback: inside a container the proxy binds
0.0.0.0 and a port mapping's traffic may arrive from a gateway address, a pod's sidecars share
its loopback, and a reverse proxy on the same host makes every request look local. Whoever can
read the file is the user who started Tripwire (or root); nobody else gets admin, whatever
the network looks like.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import secrets
from pathlib import Path

from proxy.auth import Claims
from proxy.telemetry.logs import event

PREFIX = "twl_"
LOCAL_ACTOR = "local-admin"
FILE_ENV = "TRIPWIRE_AUTH__LOCAL_ADMIN_FILE"
DEFAULT_FILE = "~/.config/tripwire/admin-token"


def token_path(setting: str | None = None) -> Path | None:
    """The file named by the setting (or, for the CLI, by the environment or the default)."""
    value = setting if setting is not None else os.environ.get(FILE_ENV, DEFAULT_FILE)
    if not value.strip():
        return None
    try:
        return Path(value).expanduser()
    except RuntimeError:  # "~" of a user with no home: no local token rather than a crash
        event("local_admin_unavailable", logging.WARNING, file=value, error="no home folder")
        return None


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if text.startswith(PREFIX) and len(text) > len(PREFIX) + 20 else None


def ensure_token(path: Path) -> str | None:
    """The token in ``path``, made first when there is none; None (and a warning) when the
    file can be neither read nor written, e.g. on a read-only file system."""
    existing = read_token(path)
    if existing is not None:
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        return existing
    token = PREFIX + secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Created with 0600 from the start: never readable by others, not even for a moment.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(token + "\n")
    except OSError as error:
        event(
            "local_admin_unavailable",
            logging.WARNING,
            file=str(path),
            error=error.strerror or type(error).__name__,
            hint="set auth.local_admin_file to a writable path, or mint admin tokens",
        )
        return None
    return token


class LocalAdmin:
    """Recognises the local token; compared in constant time."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self.claims = Claims(sub=LOCAL_ACTOR, role="admin")

    def matches(self, bearer: str) -> bool:
        return hmac.compare_digest(bearer.encode(), self._token)

"""Write access to the live page: an operator token, from a file or the environment, never the command line.

Without a token the page is read-only: every write request is refused. With
one, a write request must carry it (`Authorization: Bearer TOKEN`); it is
compared in constant time (hmac.compare_digest). Refusals are counted by reason
(read-only, missing, wrong), for the page and /metrics. A command line is
visible to every user of the box (ps, /proc), so the token never travels on it.
"""

from __future__ import annotations

import hmac
import logging
import os
import stat
import threading
from pathlib import Path

from winclip.runtime.errors import WinclipError
from winclip.runtime.files import FileRefused, read_regular
from winclip.runtime.line import defaults

log = logging.getLogger(__name__)

MAX_TOKEN_FILE_BYTES = 4096


class TokenError(WinclipError):
    """An operator token that cannot be used, with a one-line reason."""


def load_token(path: Path | None, environ=None) -> str | None:
    """The operator token from `path` (its first line) or the WINCLIP_OPERATOR_TOKEN variable; None if neither."""
    environ = os.environ if environ is None else environ
    if path is not None:
        path = Path(path)
        try:
            text = read_regular(path, MAX_TOKEN_FILE_BYTES, "--operator-token-file").decode("utf-8")
            info = path.stat()  # who else may read it
        except FileRefused as exc:
            raise TokenError(str(exc)) from None
        except OSError as exc:
            raise TokenError(f"cannot read --operator-token-file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise TokenError(f"--operator-token-file {path} is not text") from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("--operator-token-file %s can be read by other users of this box (chmod 600 it)", path)
        token, where = (text.splitlines() or [""])[0].strip(), f"--operator-token-file {path}"
    elif environ.get(defaults.OPERATOR_TOKEN_ENV):
        token, where = environ[defaults.OPERATOR_TOKEN_ENV].strip(), defaults.OPERATOR_TOKEN_ENV
    else:
        return None
    if len(token) < defaults.MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise TokenError(f"the operator token in {where} must be at least {defaults.MIN_TOKEN_CHARS} printable "
                         "characters without spaces (for example: python -c 'import secrets; "
                         "print(secrets.token_urlsafe(24))')")
    return token


class WriteGuard:
    """Decides whether a write request may go ahead; counts the refusals."""

    REASONS = ("read-only", "missing", "wrong")

    def __init__(self, token: str | None):
        self._token = None if token is None else token.encode("utf-8")
        self._lock = threading.Lock()
        self.refused = {reason: 0 for reason in self.REASONS}
        self.allowed = 0

    @property
    def writable(self) -> bool:
        return self._token is not None

    def check(self, authorization: str | None) -> str | None:
        """None when the request may write, else why not ("read-only", "missing" or "wrong"), counted."""
        reason = None
        if self._token is None:
            reason = "read-only"
        else:
            scheme, _, given = (authorization or "").strip().partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                reason = "missing"
            elif not hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token):
                reason = "wrong"
        with self._lock:
            if reason is None:
                self.allowed += 1
            else:
                self.refused[reason] += 1
        return reason

    def counts(self) -> dict:
        with self._lock:
            return {"writable": self.writable, "allowed": self.allowed, "refused": dict(self.refused)}

"""Write access to the live page: an operator token, from a file or the environment, never the command line.

Without a token the page is read-only: every write request is refused. With
one, a write request must carry it (`Authorization: Bearer TOKEN`); it is
compared in constant time (hmac.compare_digest of SHA-256 digests, against every
operator's token). A token file may name several operators (`name:token`
lines); the name goes into what they change. The file is re-read when it
changes, so a removed line stops that token without a restart. Refusals are counted by reason
(read-only, missing, wrong), for the page and /metrics. A command line is
visible to every user of the box (ps, /proc), so the token never travels on it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from winclip.runtime.errors import WinclipError
from winclip.runtime.files import FileRefused, read_regular
from winclip.runtime.line import defaults

log = logging.getLogger(__name__)

MAX_TOKEN_FILE_BYTES = 4096


class TokenError(WinclipError):
    """An operator token that cannot be used, with a one-line reason."""


# name:token; a name starts with a letter, so a legacy token (token_urlsafe: letters, digits, '-', '_') never reads
# as a name unless it holds a ':' after such a start
NAMED_LINE = re.compile(r"([A-Za-z][A-Za-z0-9._-]{0,31}):(.+)")


@dataclass(frozen=True)
class Access:
    """What the guard decided: `refused` is None when the request may write; `name` is the operator's name
    (None for an unnamed token)."""

    refused: str | None
    name: str | None = None


def _checked(token: str, where: str) -> str:
    if len(token) < defaults.MIN_TOKEN_CHARS or not token.isprintable() or " " in token:
        raise TokenError(f"the operator token in {where} must be at least {defaults.MIN_TOKEN_CHARS} printable "
                         "characters without spaces (for example: python -c 'import secrets; "
                         "print(secrets.token_urlsafe(24))')")
    return token


def parse_tokens(text: str, where: str) -> list[tuple[str | None, str]]:
    """(name, token) pairs of a token file's text.

    Lines `name:token`, one per operator (blank lines and '#' comments are skipped). A file whose first
    line is not `name:token` is the older format: that first line is the one token, with no name (further
    lines are ignored, with a warning in the log).
    """
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise TokenError(f"{where} holds no operator token")
    if not NAMED_LINE.fullmatch(lines[0][1]):
        if len(lines) > 1:
            log.warning("%s: only line %d is used, as the one unnamed token (line 1 is not name:token); "
                        "to name operators, write every line as name:token", where, lines[0][0])
        return [(None, _checked(lines[0][1], where))]
    pairs, names = [], set()
    for n, line in lines:
        match = NAMED_LINE.fullmatch(line)
        if match is None:
            raise TokenError(f"{where} line {n}: expected name:token (one operator per line)")
        name, token = match.group(1), match.group(2).strip()
        if name.lower() in names:
            raise TokenError(f"{where} line {n}: the name {name} is given twice")
        names.add(name.lower())
        pairs.append((name, _checked(token, f"{where} line {n}")))
    if len({t for _, t in pairs}) != len(pairs):
        raise TokenError(f"{where}: two operators share one token; give each their own")
    return pairs


def _digest(token: str) -> bytes:
    # compared as fixed-length digests: the compare takes the same time whatever the length of the guess
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class OperatorTokens:
    """The operators allowed to write: from a token file (re-read when it changes, so a removed line stops
    that token without a restart) or one fixed token (the environment)."""

    def __init__(self, pairs: list[tuple[str | None, str]], path: Path | None = None, stamp=None):
        """`stamp`: the file's _stat() from before `pairs` were read from it (a change after it is seen)."""
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._entries = [(name, _digest(token)) for name, token in pairs]
        self._stamp = stamp if stamp is not None or self.path is None else self._stat()

    @property
    def names(self) -> list[str]:
        self._refresh()  # a removed line's name goes at once, as its token does
        with self._lock:
            return [name for name, _ in self._entries if name is not None]

    def match(self, given: str) -> tuple[bool, str | None]:
        """(whether `given` is an operator's token, that operator's name); every entry is compared."""
        self._refresh()
        digest = _digest(given)
        found, name = False, None
        with self._lock:
            entries = list(self._entries)
        for entry_name, entry_digest in entries:  # no early exit: the time does not say which line matched
            if hmac.compare_digest(digest, entry_digest):
                found, name = True, entry_name
        return found, name

    def _stat(self):
        try:
            info = self.path.stat()
        except OSError:
            return None
        return _stamp(info)

    def _refresh(self) -> None:
        """Re-read the file when its times, size or inode changed; one that cannot be used lets no one write."""
        if self.path is None:
            return
        stamp = self._stat()  # taken before reading: a change while it is read is seen next time
        if stamp == self._stamp:
            return
        try:
            pairs = parse_tokens(_read_token_file(self.path), f"--operator-token-file {self.path}")
        except TokenError as exc:
            pairs = []
            log.warning("%s: no operator may write until it is fixed", exc)
        with self._lock:
            self._entries = [(name, _digest(token)) for name, token in pairs]
            self._stamp = stamp
        log.info("--operator-token-file %s re-read: %d operator token(s)", self.path, len(pairs))


def _stamp(info: os.stat_result) -> tuple:
    # st_ctime_ns too: an edit of the same size whose mtime was set back still changes it
    return info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino


def _read_token_file(path: Path) -> str:
    try:
        return read_regular(path, MAX_TOKEN_FILE_BYTES, "--operator-token-file").decode("utf-8")
    except FileRefused as exc:
        raise TokenError(str(exc)) from None
    except OSError as exc:
        raise TokenError(f"cannot read --operator-token-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TokenError(f"--operator-token-file {path} is not text") from None


def load_token(path: Path | None, environ=None) -> OperatorTokens | None:
    """The operators' tokens from `path` or the WINCLIP_OPERATOR_TOKEN variable; None if neither."""
    environ = os.environ if environ is None else environ
    if path is not None:
        path = Path(path)
        try:
            info = path.stat()  # before reading: a change made while it is read is picked up at the first request
        except OSError as exc:
            raise TokenError(f"cannot read --operator-token-file {path}: {exc.strerror or exc}") from None
        text = _read_token_file(path)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("--operator-token-file %s can be read by other users of this box (chmod 600 it)", path)
        pairs = parse_tokens(text, f"--operator-token-file {path}")
        if len(pairs) == 1 and pairs[0][0] is not None:
            # an older one-token file whose token holds ':' after a letter reads the same way: say how it was read
            log.warning("--operator-token-file %s is read as the token of operator %s (the text after the first "
                        "':'); a token of the older one-token format that holds ':' must now be written "
                        "name:TOKEN", path, pairs[0][0])
        return OperatorTokens(pairs, path, stamp=_stamp(info))
    if environ.get(defaults.OPERATOR_TOKEN_ENV):
        return OperatorTokens(parse_tokens(environ[defaults.OPERATOR_TOKEN_ENV], defaults.OPERATOR_TOKEN_ENV))
    return None


class WriteGuard:
    """Decides whether a write request may go ahead, and whose it is; counts the refusals."""

    REASONS = ("read-only", "missing", "wrong")

    def __init__(self, token: OperatorTokens | str | None):
        if isinstance(token, str):  # one unnamed token (tests, callers from before named operators)
            token = OperatorTokens([(None, _checked(token, "the operator token"))])
        self.tokens = token
        self._lock = threading.Lock()
        self.refused = {reason: 0 for reason in self.REASONS}
        self.allowed = 0

    @property
    def writable(self) -> bool:
        return self.tokens is not None

    def authorize(self, authorization: str | None) -> Access:
        """Whether the request may write (refusals counted), and the name of the operator whose token it carries."""
        reason, name = None, None
        if self.tokens is None:
            reason = "read-only"
        else:
            scheme, _, given = (authorization or "").strip().partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                reason = "missing"
            else:
                found, name = self.tokens.match(given.strip())
                reason = None if found else "wrong"
        with self._lock:
            if reason is None:
                self.allowed += 1
            else:
                self.refused[reason] += 1
        return Access(reason, name if reason is None else None)

    def counts(self) -> dict:
        with self._lock:
            return {"writable": self.writable, "allowed": self.allowed, "refused": dict(self.refused),
                    "operators": self.tokens.names if self.tokens is not None else []}

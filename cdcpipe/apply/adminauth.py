"""Who may use the admin API: bearer tokens with a scope (``read``: list and show; ``write``: also replay and
resolve), from settings and/or a file re-read when it changes (so a token is rotated without a restart), compared
in constant time; a client that fails too often is refused for a while (429) before its token is even looked at.
No token is ever logged or echoed."""

from __future__ import annotations

import contextlib
import hmac
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

READ, WRITE = "read", "write"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: its HTTP status (401, 403, 429) and a message (never the token)."""

    status: int
    message: str


def parse_tokens(text: str, source: str) -> list[tuple[str, str]]:
    """``<scope> <token>`` per line (``#`` comments and blank lines skipped); raises ValueError naming the line,
    never the token."""
    found: list[tuple[str, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in (READ, WRITE):
            raise ValueError(f"{source} line {n}: expected '<read|write> <token>'")
        if len(parts[1]) < 16:
            raise ValueError(f"{source} line {n}: a token must have at least 16 characters")
        found.append((parts[0], parts[1]))
    return found


class Tokens:
    """The tokens in force: ``fixed`` (from settings) plus those of ``path`` as of its last change."""

    def __init__(self, fixed: list[tuple[str, str]], path: Path | None = None, *, max_failures: int = 10,
                 window_s: float = 60.0) -> None:
        self._fixed = fixed
        self._path = path
        self._stamp: tuple[float, int] | None = None
        self._from_file: list[tuple[str, str]] = []
        self._failures: dict[str, deque[float]] = {}
        self._max = max_failures
        self._window = window_s
        if path is not None:
            self._reload()

    def _reload(self) -> None:
        assert self._path is not None
        stat = self._path.stat()
        stamp = (stat.st_mtime, stat.st_size)
        if stamp != self._stamp:
            self._from_file = parse_tokens(self._path.read_text(), str(self._path))
            self._stamp = stamp

    def scope(self, given: str) -> str | None:
        """The scope of token ``given`` (None: unknown); every known token is compared, in constant time."""
        if self._path is not None:  # a file being rewritten or broken: its last good version's tokens stay
            with contextlib.suppress(OSError, ValueError):
                self._reload()
        found: str | None = None
        for scope, token in (*self._fixed, *self._from_file):
            if hmac.compare_digest(given.encode(), token.encode()) and (found is None or scope == WRITE):
                found = scope
        return found

    def check(self, authorization: str | None, client: str, need: str, now: float | None = None) -> Refusal | None:
        """None when ``authorization`` (the header) grants ``need`` to ``client``; else why not."""
        now = time.monotonic() if now is None else now
        failures = self._failures.setdefault(client, deque())
        while failures and failures[0] < now - self._window:
            failures.popleft()
        if len(failures) >= self._max:
            return Refusal(429, "too many failed authentications: try again later")
        scheme, _, given = (authorization or "").partition(" ")
        scope = self.scope(given.strip()) if scheme.lower() == "bearer" and given.strip() else None
        if scope is None:
            failures.append(now)
            return Refusal(401, "a valid bearer token is required")
        if need == WRITE and scope != WRITE:
            return Refusal(403, "this token may only read")
        return None

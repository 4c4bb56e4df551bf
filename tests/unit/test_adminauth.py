"""The admin API's tokens: scopes, 401/403, the failed-authentication limit (429, per client, for a window), a
tokens file re-read when it changes (rotation without a restart), and no token in any refusal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdcpipe.apply.adminauth import READ, WRITE, Tokens, parse_tokens

W, R = "w" * 20, "r" * 20


def test_scopes_and_refusals() -> None:
    tokens = Tokens([(WRITE, W), (READ, R)])
    assert tokens.check(f"Bearer {W}", "a", WRITE) is None
    assert tokens.check(f"bearer {R}", "a", READ) is None
    refusal = tokens.check(f"Bearer {R}", "a", WRITE)
    assert refusal is not None and refusal.status == 403
    for header in (None, "", "Bearer", f"Basic {W}", "Bearer nope", f"Bearer {W}x"):
        refusal = tokens.check(header, "b", READ)
        assert refusal is not None and refusal.status == 401 and W not in refusal.message


def test_failed_authentications_are_limited_per_client() -> None:
    tokens = Tokens([(WRITE, W)], max_failures=3, window_s=60)
    for i in range(3):
        assert tokens.check("Bearer bad", "x", READ, now=100 + i).status == 401  # type: ignore[union-attr]
    assert tokens.check(f"Bearer {W}", "x", READ, now=104).status == 429  # type: ignore[union-attr]
    assert tokens.check(f"Bearer {W}", "y", READ, now=104) is None  # another client
    assert tokens.check(f"Bearer {W}", "x", READ, now=161) is None  # the window passed


def test_tokens_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# rotated monthly\nwrite {W}\n")
    tokens = Tokens([], path)
    assert tokens.scope(W) == WRITE and tokens.scope(R) is None
    path.write_text(f"read {R}\n")
    os.utime(path, (1, 1))  # a different stamp even within the same second
    assert tokens.scope(R) == READ and tokens.scope(W) is None
    path.write_text("broken line\n")
    os.utime(path, (2, 2))
    assert tokens.scope(R) == READ  # a broken file keeps the last good tokens in force


def test_parse_tokens_names_the_line_never_the_token() -> None:
    with pytest.raises(ValueError, match="line 2") as info:
        parse_tokens(f"read {R}\nadmin {W}\n", "f")
    assert W not in str(info.value)
    with pytest.raises(ValueError, match="16 characters"):
        parse_tokens("write short\n", "f")

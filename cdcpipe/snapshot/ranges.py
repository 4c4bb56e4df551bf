"""Token ranges of the Murmur3 ring: the units a snapshot reads, records as done, and resumes by.

A range is ``(start, end]`` in token order, read with ``token(pk) > start AND token(pk) <= end``.  Murmur3 never
gives a key the token -2^63 (Cassandra normalises it to 2^63-1), so ``(-2^63, 2^63-1]`` is the whole ring.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MIN_TOKEN = -(1 << 63)
MAX_TOKEN = (1 << 63) - 1


@dataclass(frozen=True, slots=True, order=True)
class TokenRange:
    """The tokens ``t`` with ``start < t <= end``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not MIN_TOKEN <= self.start < self.end <= MAX_TOKEN:
            raise ValueError(f"not a token range: ({self.start}, {self.end}]")

    @property
    def width(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"({self.start}, {self.end}]"


def ring_ranges(tokens: Iterable[int]) -> list[TokenRange]:
    """The ranges between the ring's tokens (each node's or vnode's), covering the whole ring once; the range
    that wraps past 2^63-1 is cut there.  No tokens (an empty ring) gives the whole ring."""
    cuts = sorted({t for t in tokens if MIN_TOKEN < t < MAX_TOKEN})
    bounds = [MIN_TOKEN, *cuts, MAX_TOKEN]
    return [TokenRange(a, b) for a, b in itertools.pairwise(bounds)]


def split(ranges: Sequence[TokenRange], pieces: int) -> list[TokenRange]:
    """Cut ``ranges`` into about ``pieces`` ranges (never fewer than given): each range into a number of equal
    parts proportional to its width, at least one."""
    total = sum(r.width for r in ranges) or 1
    out: list[TokenRange] = []
    for r in ranges:
        n = max(1, round(pieces * r.width / total))
        n = min(n, r.width)
        cuts = [r.start + (r.width * i) // n for i in range(n)] + [r.end]
        out.extend(TokenRange(a, b) for a, b in itertools.pairwise(cuts) if a < b)
    return out


def subtract(todo: Sequence[TokenRange], done: Iterable[TokenRange]) -> list[TokenRange]:
    """The parts of ``todo`` that no range of ``done`` covers (``done`` may be cut differently, e.g. by an earlier
    run with other ``--splits`` or another ring)."""
    merged: list[TokenRange] = []
    for d in sorted(done):
        if merged and d.start <= merged[-1].end:
            if d.end > merged[-1].end:
                merged[-1] = TokenRange(merged[-1].start, d.end)
        else:
            merged.append(d)
    out: list[TokenRange] = []
    for r in todo:
        start = r.start
        for d in merged:
            if d.end <= start or d.start >= r.end:
                continue
            if d.start > start:
                out.append(TokenRange(start, d.start))
            start = max(start, d.end)
            if start >= r.end:
                break
        if start < r.end:
            out.append(TokenRange(start, r.end))
    return out

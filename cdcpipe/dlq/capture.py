"""Capture's dead letters replayed by ``cdcpipe dlq replay``: each one's entries read again with the code running
now (:class:`cdcpipe.capture.reread.Rereader`: the entry's bytes kept in the record, or the damaged part of its
segment found in the quarantine directory), and the events they give produced to their table topics, where apply
merges them by Cassandra's rules (an old event never overwrites newer data).  The outcome is recorded on the dead
letter like apply's: ``replayed`` (result ``produced N events to ...``), or ``failed`` with the reason and its
retry count increased when the entries still cannot be read — it stays, and is never sent round again by itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cdcpipe.apply import metrics
from cdcpipe.apply.dlqstore import Letter
from cdcpipe.apply.replay import Outcome, settled
from cdcpipe.capture.reread import Rereader
from cdcpipe.config import Settings

PRODUCED = "produced"


class CaptureReplayer:
    """Replays capture dead letters one at a time; connects to Cassandra and Kafka on the first one."""

    def __init__(self, settings: Settings, pool: Any, segment_dirs: Sequence[Path] = ()) -> None:
        self.settings = settings
        self.pool = pool
        self.segment_dirs = list(segment_dirs)
        self._rereader: Rereader | None = None

    async def close(self) -> None:
        if self._rereader is not None:
            await asyncio.to_thread(self._rereader.close)

    async def replay(self, letter: Letter, note: str | None, actor: str) -> Outcome:
        outcome = await self._replay(letter, note, actor)
        metrics.DLQ_REPLAYS.labels(outcome.result).inc()
        return outcome

    async def _replay(self, letter: Letter, note: str | None, actor: str) -> Outcome:
        return await settled(self.pool, letter, note, actor, self._reread)

    async def _reread(self, letter: Letter) -> tuple[str, str]:
        body = json.loads(letter.value or b"")
        if not isinstance(body, dict):
            raise ValueError("its record is not a JSON object")
        if self._rereader is None:
            self._rereader = await asyncio.to_thread(Rereader, self.settings, self.segment_dirs)
        reread = await asyncio.to_thread(self._rereader.read, body)
        if reread.failures:
            raise ValueError("still unreadable: " + "; ".join(reread.failures))
        await asyncio.to_thread(self._rereader.produce, reread)
        return PRODUCED, f"{PRODUCED} {len(reread.records)} events to {', '.join(reread.topics)}"

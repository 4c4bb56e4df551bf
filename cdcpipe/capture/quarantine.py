"""The quarantine directory: where capture keeps the segments it could not read fully, instead of deleting them.

A segment is *marked* as soon as capture meets damage in it (an unreadable header, a missing encryption key, a
damaged section or entry, data ending before the durable offset of its ``_cdc.idx``, an idx that stays
unreadable): ``<quarantine>/<segment>.log.pending.json`` is written and fsynced before the position past the
damage can be committed.  :class:`~cdcpipe.capture.segment_gc.SegmentCollector` then *moves* a marked segment (its
``.log`` and ``_cdc.idx``) here instead of deleting it, once the committed position covers it, so cdc_raw is freed
(Cassandra keeps accepting CDC writes) and no byte is lost.  A move is a ``rename``: the directory must be on the
filesystem of cdc_raw (checked at start).  ``<segment>.log.json`` says why; ``cdcpipe dump`` re-reads the
``.log``.  The operator clears the ``quarantine`` condition of ``/readyz`` by moving the files away.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from cdcpipe.capture import metrics
from cdcpipe.errors import ConfigError, SegmentQuarantineError

log = structlog.get_logger(__name__)
_PENDING = ".pending.json"


@dataclass(frozen=True, slots=True)
class Marked:
    """A segment marked for quarantine: its ``.log`` name, why (``cause``, ``reason``) and where (``position``)."""

    name: str
    cause: str
    reason: str
    position: str


class Quarantine:
    """The quarantine directory of one cdc_raw (blocking file I/O: call it from a worker thread)."""

    def __init__(self, directory: Path, cdc_raw: Path) -> None:
        self.directory = directory
        self.cdc_raw = cdc_raw

    @classmethod
    def open(cls, directory: Path | None, cdc_raw: Path) -> Quarantine:
        """Create the directory (default ``<cdc_raw>/../cdc_quarantine``); ConfigError when it is not on cdc_raw's
        filesystem (a move must be a rename) or cannot be created."""
        target = directory if directory is not None else cdc_raw.resolve().parent / "cdc_quarantine"
        try:
            target.mkdir(parents=True, exist_ok=True)
            same = os.stat(target).st_dev == os.stat(cdc_raw).st_dev
        except OSError as exc:
            raise ConfigError(f"capture.quarantine_dir {target}: {exc.strerror or exc}") from None
        if not same:
            raise ConfigError(f"capture.quarantine_dir {target} is not on the filesystem of cdc_raw {cdc_raw}: "
                              "a segment is moved there by rename")
        return cls(target, cdc_raw)

    def mark(self, log_name: str, cause: str, reason: str, position: str) -> bool:
        """Mark segment ``log_name`` (durably); False when it already was."""
        path = self.directory / (log_name + _PENDING)
        if path.exists():
            return False
        body = json.dumps({"segment": log_name, "cause": cause, "reason": reason, "position": position,
                           "marked_at_ms": int(time.time() * 1000)}).encode()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        metrics.SEGMENTS_QUARANTINED.labels(cause).inc()
        log.error("segment marked for quarantine: it is kept, never deleted", segment=log_name, cause=cause,
                  reason=reason, position=position, quarantine_dir=str(self.directory))
        return True

    def is_marked(self, log_name: str) -> bool:
        return (self.directory / (log_name + _PENDING)).exists()

    def move(self, seg_log: Path, idx: Path, end: str) -> Path:
        """Move a marked segment's ``.log`` and ``_cdc.idx`` here (the ``.log`` first: Cassandra's usage counts
        it); its ``<name>.json`` records why and how far it was committed.  Raises SegmentQuarantineError."""
        pending = self.directory / (seg_log.name + _PENDING)
        try:
            info = json.loads(pending.read_bytes()) if pending.exists() else {"segment": seg_log.name}
            info.update({"committed_through": end, "moved_at_ms": int(time.time() * 1000),
                         "from": str(seg_log.parent)})
            meta = self.directory / (seg_log.name + ".json")
            meta.write_text(json.dumps(info, indent=1))
            if seg_log.exists():
                os.rename(seg_log, self.directory / seg_log.name)
            if idx.exists():
                os.rename(idx, self.directory / idx.name)
            pending.unlink(missing_ok=True)
            _fsync_dir(self.directory)
        except OSError as exc:
            raise SegmentQuarantineError(str(seg_log), f"cannot move to {self.directory}: {exc}") from exc
        metrics.SEGMENTS_MOVED.inc()
        log.error("segment moved to quarantine", segment=seg_log.name, quarantine_dir=str(self.directory),
                  committed_through=end)
        return self.directory / seg_log.name

    def held(self) -> list[Marked]:
        """Every segment marked or moved here, oldest first (what ``/readyz`` reports)."""
        out: list[Marked] = []
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return out
        for name in names:
            if not name.endswith(".json") or not name.startswith("CommitLog-"):
                continue
            seg = name.removesuffix(_PENDING).removesuffix(".json")
            if name.endswith(_PENDING) and f"{seg}.json" in names:
                continue
            try:
                info = json.loads((self.directory / name).read_bytes())
            except (OSError, ValueError):
                info = {}
            out.append(Marked(seg, str(info.get("cause", "unknown")), str(info.get("reason", "")),
                              str(info.get("position", ""))))
        metrics.QUARANTINE_HELD.set(len(out))
        return out


def describe(held: list[Marked], directory: Path) -> str:
    """The ``quarantine`` readiness reason: which segments are held and why."""
    first = "; ".join(f"{m.name} ({m.cause} at {m.position}: {m.reason})" for m in held[:3])
    more = f" and {len(held) - 3} more" if len(held) > 3 else ""
    return (f"{len(held)} segment(s) held in {directory}: {first}{more}; inspect with `cdcpipe dump`, then move "
            "them away to clear this")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

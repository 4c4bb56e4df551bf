"""Waking the follower when cdc_raw changes: Linux inotify through ctypes on libc (no dependency).

Contract of :class:`DirectoryWatcher`
    - :meth:`DirectoryWatcher.open` watches one directory for files closed after writing (Cassandra rewrites
      ``<segment>_cdc.idx`` on every commit-log sync: truncate, write, close), created (the hard link of a new
      segment) or moved in.  It returns None where inotify is unavailable (not Linux, no such libc symbol, the
      per-user watch limit reached): the caller then only polls.
    - A wake-up is a hint, never data: events may be coalesced or lost (a full kernel queue is reported as one
      overflow, which counts as a wake-up), so the caller re-reads the directory after each one and keeps a
      fallback poll.  Only names ending in ``wanted`` suffixes wake (capture's own reads and deletions never do).
    - :meth:`DirectoryWatcher.fileno` becomes readable when events are pending; :meth:`DirectoryWatcher.drain`
      consumes them without blocking.  Once the directory itself is deleted or moved the watcher is ``dead``
      and never wakes again.
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# <sys/inotify.h>
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x002, 0x008, 0x080, 0x100
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR = 0x01000000
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, getattr(os, "O_CLOEXEC", 0o2000000)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length
_WATCHED = IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED


def _libc_calls() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """(inotify_init1, inotify_add_watch) from libc, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc: Any = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's among them
        init1, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init1.argtypes, init1.restype = [ctypes.c_int], ctypes.c_int
    add.argtypes, add.restype = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32], ctypes.c_int
    return init1, add


class DirectoryWatcher:
    """An inotify instance watching one directory (see the module docstring); close it with :meth:`close`."""

    def __init__(self, fd: int, path: Path, wanted: tuple[str, ...]) -> None:
        self._fd = fd
        self.path = path
        self.wanted = tuple(s.encode() for s in wanted)
        self.dead = False

    @classmethod
    def open(cls, path: Path, wanted: tuple[str, ...] = ("_cdc.idx", ".log")) -> DirectoryWatcher | None:
        """A watcher on ``path`` waking for names ending in one of ``wanted``; None without inotify."""
        calls = _libc_calls()
        if calls is None:
            return None
        init1, add = calls
        fd = init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return None
        if add(fd, os.fsencode(path), _WATCHED | IN_ONLYDIR) < 0:
            os.close(fd)
            return None
        return cls(fd, path, wanted)

    def fileno(self) -> int:
        return self._fd

    def drain(self) -> bool:
        """Consume the pending events (non-blocking); True when one of them is a reason to re-read."""
        wake = False
        while True:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return wake
            except OSError:
                self.dead = True
                return True
            if not buf:
                return wake
            p = 0
            while p + _EVENT.size <= len(buf):
                _, mask, _, n = _EVENT.unpack_from(buf, p)
                name = buf[p + _EVENT.size:p + _EVENT.size + n].rstrip(b"\0")
                p += _EVENT.size + n
                if mask & IN_Q_OVERFLOW:
                    wake = True
                elif mask & _GONE:
                    self.dead = wake = True
                elif name.endswith(self.wanted):
                    wake = True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

"""Following cdc_raw: durable offsets, COMPLETED, order, resume, and the empty idx Cassandra leaves briefly."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cdcpipe.capture.cdc_index import SegmentFollower, read_index, scan
from cdcpipe.capture.inotify import DirectoryWatcher
from cdcpipe.capture.segment import Position, SegmentReader

SEG1, SEG2 = 1700000000001, 1700000000002


def entries(n: int, tag: bytes) -> list[bytes]:
    return [tag + b"-%03d-payload" % i for i in range(n)]


def write(raw: Path, seg: int, data: bytes, idx: str | None) -> list[int]:
    (raw / f"CommitLog-7-{seg}.log").write_bytes(data)
    if idx is not None:
        (raw / f"CommitLog-7-{seg}_cdc.idx").write_text(idx)
    reader = SegmentReader(raw / f"CommitLog-7-{seg}.log")
    list(reader.read())
    return [nxt for _, nxt in reader.stats.section_spans]


def payloads(follower: SegmentFollower, n: int = 1000) -> tuple[list[bytes], int | None]:
    chunk = follower.poll(n)
    assert all(i.error is None for i in chunk.items)
    return [i.entry.data for i in chunk.items if i.entry is not None], (chunk.end.segment_id if chunk.end else None)


def test_read_index(tmp_path: Path) -> None:
    idx = tmp_path / "x_cdc.idx"
    idx.write_text("")
    assert read_index(idx) == (None, False)
    idx.write_text("123")
    assert read_index(idx) == (123, False)
    idx.write_text("456\nCOMPLETED")
    assert read_index(idx) == (456, True)
    assert read_index(tmp_path / "missing") == (None, False)


def test_follows_durable_offset_then_completed(tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    data = segment_builder([entries(3, b"a"), entries(2, b"b")], segment_id=SEG1, pad_to=4096)
    ends = write(tmp_path, SEG1, data, "")
    follower = SegmentFollower(tmp_path, None)
    assert payloads(follower) == ([], None)  # empty idx: wait
    (tmp_path / f"CommitLog-7-{SEG1}_cdc.idx").write_text(str(ends[0]))
    got, end = payloads(follower)
    assert got == entries(3, b"a") and end is None
    assert follower.position == Position(SEG1, ends[0])
    assert payloads(follower) == ([], None)
    (tmp_path / f"CommitLog-7-{SEG1}_cdc.idx").write_text(f"{ends[1]}\nCOMPLETED")
    got, end = payloads(follower)
    assert got == entries(2, b"b") and end == SEG1
    assert payloads(follower) == ([], None)  # reported once


def test_segments_in_order_and_resume(tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    ends1 = write(tmp_path, SEG1, segment_builder([entries(4, b"a")], segment_id=SEG1), None)
    write(tmp_path, SEG1, segment_builder([entries(4, b"a")], segment_id=SEG1), str(ends1[0]))
    ends2 = write(tmp_path, SEG2, segment_builder([entries(2, b"c")], segment_id=SEG2), "")
    (tmp_path / f"CommitLog-7-{SEG2}_cdc.idx").write_text(f"{ends2[0]}\nCOMPLETED")
    follower = SegmentFollower(tmp_path, None)
    got, _ = payloads(follower, 2)
    assert got == entries(4, b"a")[:2]
    resume = follower.position
    got, end = payloads(follower)
    assert got == entries(4, b"a")[2:] and end is None  # SEG2 waits: SEG1 is not COMPLETED
    assert payloads(SegmentFollower(tmp_path, resume))[0] == entries(4, b"a")[2:]
    (tmp_path / f"CommitLog-7-{SEG1}_cdc.idx").write_text(f"{ends1[0]}\nCOMPLETED")
    assert payloads(follower) == ([], SEG1)
    assert payloads(follower) == (entries(2, b"c"), SEG2)
    assert [s.segment_id for s in scan(tmp_path)] == [SEG1, SEG2]
    # a checkpoint past a segment skips it entirely
    assert payloads(SegmentFollower(tmp_path, Position(SEG2, 0))) == (entries(2, b"c"), SEG2)


def test_log_without_idx_is_ignored(tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    write(tmp_path, SEG1, segment_builder([entries(1, b"a")], segment_id=SEG1), None)
    assert scan(tmp_path) == [] and payloads(SegmentFollower(tmp_path, None)) == ([], None)


def test_collector_deletes_only_completed_segments_covered_by_the_position(
        tmp_path: Path, segment_builder: Callable[..., bytes]) -> None:
    from cdcpipe.capture.segment_gc import SegmentCollector

    ends1 = write(tmp_path, SEG1, segment_builder([entries(2, b"a")], segment_id=SEG1), "")
    (tmp_path / f"CommitLog-7-{SEG1}_cdc.idx").write_text(f"{ends1[0]}\nCOMPLETED")
    ends2 = write(tmp_path, SEG2, segment_builder([entries(2, b"b")], segment_id=SEG2), "")
    (tmp_path / f"CommitLog-7-{SEG2}_cdc.idx").write_text(str(ends2[0]))
    gc = SegmentCollector(tmp_path, total_space=10**9)
    assert gc.collect(Position(SEG1, ends1[0] - 1)) == []  # not all of it committed yet
    assert gc.collect(Position(SEG2, ends2[0])) == [SEG1]  # SEG2 is live: never deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"CommitLog-7-{SEG2}.log", f"CommitLog-7-{SEG2}_cdc.idx"]
    assert gc.usage() > 0


def test_watcher_wakes_on_idx_rewrite_and_new_segment_only(tmp_path: Path) -> None:
    """inotify (Linux, as in production): an idx written and closed or a new segment link wakes the follower;
    capture's own reads and deletions, and unrelated files, do not."""
    watcher = DirectoryWatcher.open(tmp_path)
    assert watcher is not None
    try:
        idx = tmp_path / f"CommitLog-7-{SEG1}_cdc.idx"
        assert not watcher.drain()
        idx.write_text("100")  # Cassandra: truncate, write, close
        assert watcher.drain()
        assert not watcher.drain()  # consumed
        idx.read_text()
        (tmp_path / "notes.txt").write_text("x")
        idx.unlink()
        assert not watcher.drain()
        os.link(tmp_path / "notes.txt", tmp_path / f"CommitLog-7-{SEG2}.log")  # the hard link of a new segment
        assert watcher.drain()
        (tmp_path / "tmp").write_text("7\nCOMPLETED")
        os.replace(tmp_path / "tmp", tmp_path / f"CommitLog-7-{SEG2}_cdc.idx")  # moved into place
        assert watcher.drain() and not watcher.dead
    finally:
        watcher.close()


def test_watcher_is_dead_once_its_directory_is_gone(tmp_path: Path) -> None:
    raw = tmp_path / "cdc_raw"
    raw.mkdir()
    watcher = DirectoryWatcher.open(raw)
    assert watcher is not None
    try:
        raw.rmdir()
        assert watcher.drain() and watcher.dead
    finally:
        watcher.close()
    assert DirectoryWatcher.open(tmp_path / "missing") is None

"""Capture refuses at start a node whose largest mutation could not be carried by ``kafka.max_message_bytes``."""

from __future__ import annotations

import pytest

from cdcpipe.capture.pipeline import _check_message_size
from cdcpipe.config import Settings
from cdcpipe.errors import ConfigError

MIB = 1024 * 1024


@pytest.mark.parametrize("node_segment", [None, 4 * MIB, 8 * MIB, 32 * MIB])
def test_a_node_whose_mutations_fit_starts(node_segment: int | None) -> None:
    _check_message_size(Settings(), node_segment)  # default: sized for Cassandra's default 32 MiB segments


def test_a_node_with_larger_segments_than_set_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="CDCPIPE_CAPTURE__COMMITLOG_SEGMENT_SIZE=67108864"):
        _check_message_size(Settings(), 64 * MIB)


def test_the_setting_raised_to_the_nodes_accepts_it() -> None:
    settings = Settings.model_validate({"capture": {"commitlog_segment_size": 64 * MIB}})
    _check_message_size(settings, 64 * MIB)

"""Topic names: one module spells them all, and apply reads back what capture writes."""

from __future__ import annotations

import re

from cdcpipe import topics


def test_an_event_topic_matches_the_events_pattern_and_names_its_table() -> None:
    topic = topics.table_topic("cdc.prod", "ks", "t_1")
    assert topic == "cdc.prod.ks.t_1"
    assert re.fullmatch(topics.events_pattern("cdc.prod"), topic)
    assert topics.table_of("cdc.prod", topic) == "ks.t_1"


def test_the_other_topics_of_a_prefix_are_not_event_topics() -> None:
    pattern = topics.events_pattern("cdc")
    others = [topics.schemas_topic("cdc"), topics.positions_topic("cdc"), topics.capture_dlq_topic("cdc"),
              topics.apply_dlq_topic("cdc"), topics.table_topic("other", "ks", "t")]
    assert not [t for t in others if re.fullmatch(pattern, t)]
    assert topics.apply_dlq_topic("cdc", "my.dlq") == "my.dlq"

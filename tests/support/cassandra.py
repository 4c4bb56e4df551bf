"""A driver connection to the stack's Cassandra as tests open it (protocol v5, the configured contact points)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cassandra.cluster import Cluster

if TYPE_CHECKING:
    from cdcpipe.config import Settings


def cluster(settings: Settings) -> Cluster:
    """A cluster object for the contact points of ``settings`` (not connected yet; shut it down when done)."""
    points = settings.cassandra.contact_points()
    return Cluster([h for h, _ in points], port=points[0][1], protocol_version=5)

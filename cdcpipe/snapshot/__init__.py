"""``cdcpipe snapshot``: the rows a table already holds, read with their write timestamps and TTLs and produced as
the same change events capture produces, on the same topics, so apply merges them with the live stream by
Cassandra's own rules.  A third side beside capture and apply: it depends only on the core."""

"""``cdcpipe dlq``: apply's dead letters for an operator (a tool over apply)."""

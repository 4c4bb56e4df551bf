"""``cdcpipe reconcile``: PostgreSQL compared with Cassandra by token range, drift recorded, repaired through
the pipeline."""

"""cdcpipe: Cassandra CDC to PostgreSQL through Kafka."""

__version__ = "0.1.0"

"""cdcpipe: Cassandra CDC to PostgreSQL through Kafka."""

from cdcpipe._compiled import activate as _activate

__version__ = "0.3.0"

_activate()  # capture's hot modules as mypyc extensions when a fresh build exists (cdcpipe/_compiled.py)

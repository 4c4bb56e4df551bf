"""Apply: see its ``pipeline`` module for the stages in order.  Imports only the core, never the other side."""

from cdcpipe._compiled import extend_path as _extend_path

_extend_path(__path__, __name__)

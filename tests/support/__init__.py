"""What the tests share (and ``bench/`` uses); no tests here.

- :mod:`.fixtures`: every shared fixture (the stack, cdcpipe's settings, a Cassandra session, PostgreSQL pools,
  the commit-log test data), registered by ``tests/conftest.py``;
- :mod:`.stack`: the local stack script, its ``env`` output, private stacks;
- :mod:`.processes`: the runner of ``cdcpipe`` processes, their /health and /metrics, unique names, free ports;
- :mod:`.cassandra`, :mod:`.topics`: driver connections, Kafka topics;
- :mod:`.segments`: commit-log segments and mutation bytes built by hand, the path of Cassandra's test segments;
- :mod:`.eventkit`: change events, random updates and serialized values for the unit tests;
- :mod:`.mergekit`: change events as CQL statements write them and the merge model's ``select``;
- :mod:`.capturekit`, :mod:`.applykit`: capture and apply integration helpers;
- :mod:`.live_workload`: the live reader test's seeded workload and its expectations;
- :mod:`.harness`, :mod:`.diagnose`: the end-to-end fidelity harness and its evidence on a mismatch.
"""

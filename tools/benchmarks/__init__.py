"""``stocksync-bench``: every scenario a user feels, each held in the same run
against its raw limit (gRPC alone, sqlite3 alone) and a NATS JetStream peer.

One module per scenario (``ingest``, ``catchup``, ``record``, ``latency``,
``wan``, ``fanout`` with slow watchers, ``reserve``, ``footprint``), the
limits in ``limits``, the peer pipeline in ``peer``, the result rows and the
table in ``common``, the command in ``cli``. docs/benchmarks.md says what
each measures. Never imported by the hub or the agent.
"""

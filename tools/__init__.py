"""Programs that run stocksync rather than serve it: the demo, the benchmark
harness, fault injection and the subprocess helper they share with the tests.

Nothing under ``stocksync.tools`` is imported by ``stocksync-hub serve`` or
``stocksync-agent run``.
"""

"""The stall watchdog on both ends: a stream that looks up but moves nothing.

- Agent side: a working fake hub (a real gRPC server) that welcomes every
  stream, reads every batch and never acknowledges one. With events pending,
  after ``stall_after_s`` the agent logs one line naming the warehouse,
  counts the stall, drops the call and reconnects (reason ``stall``). With
  nothing pending, a silent hub is no stall.
- Hub side: a raw agent that reports events pending and sends none. After
  ``stall_after_s`` the hub logs it, counts it and ends the stream with
  UNAVAILABLE, naming the stall.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from metrics_scrape import Scrape
from test_settings_mismatch import record_offline
from test_sync_grpc import establish

from stocksync.agent.link import AgentLink
from stocksync.agent.store import AgentStore
from stocksync.config import AgentConfig
from stocksync.tools.procs import HubChild, wait_for
from stocksync.v1 import sync_pb2, sync_pb2_grpc


class NeverAckingHub(sync_pb2_grpc.SyncServiceServicer):
    """A SyncService that welcomes every agent at watermark 0, takes its
    batches, and never acknowledges any: a hub stuck behind its disk."""

    def __init__(self) -> None:
        self.streams = 0
        self.batches = 0
        self.cancelled = 0

    async def Sync(
        self, request_iterator: AsyncIterator[sync_pb2.SyncRequest], context: Any
    ) -> AsyncIterator[sync_pb2.SyncResponse]:
        self.streams += 1
        context.add_done_callback(lambda c: self._ended(c))
        async for request in request_iterator:
            kind = request.WhichOneof("message")
            if kind == "hello":
                yield sync_pb2.SyncResponse(
                    welcome=sync_pb2.Welcome(watermark=0, protocol_version=1, max_batch_events=50)
                )
            elif kind == "batch":
                self.batches += 1

    def _ended(self, context: Any) -> None:
        if context.cancelled():
            self.cancelled += 1


async def _run_agent(db: Path, until: Any, stall_after_s: float = 1.0) -> tuple[AgentLink, Any]:
    servicer = NeverAckingHub()
    server = grpc.aio.server()
    sync_pb2_grpc.add_SyncServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = AgentConfig(
        warehouse="WH-LAX",
        hub=f"127.0.0.1:{port}",
        db=str(db),
        insecure=True,
        backoff_initial_s=0.05,
        backoff_max_s=0.5,
        stall_after_s=stall_after_s,
    ).validate()
    store = AgentStore(db)
    link = AgentLink(config, store)
    task = asyncio.ensure_future(link.run())
    try:
        await until(link, servicer)
    finally:
        link.stop()
        await task
        await server.stop(None)
        store.close()
    return link, servicer


def _sample(link: AgentLink, name: str, **labels: str) -> float:
    value = link.metrics.registry.get_sample_value(name, {"warehouse": "WH-LAX", **labels})
    assert value is not None, name
    return value


def test_an_agent_whose_hub_never_acks_reconnects_after_stall_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "lax.db"
    record_offline(db, 20)

    async def two_stalls(link: AgentLink, hub: NeverAckingHub) -> None:
        while _sample(link, "stocksync_agent_stalls_total") < 2:
            await asyncio.sleep(0.05)

    caplog.set_level(logging.WARNING, "stocksync.agent")
    link, hub = asyncio.run(asyncio.wait_for(_run_agent(db, two_stalls), 60))
    assert _sample(link, "stocksync_agent_reconnects_total", reason="stall") >= 1
    assert _sample(link, "stocksync_agent_errors_total", code="STALLED") >= 2
    assert _sample(link, "stocksync_agent_events_acknowledged_total") == 0
    assert _sample(link, "stocksync_agent_events_sent_total") >= 20
    assert hub.streams >= 2 and hub.batches >= 1
    stalled = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalled) == _sample(link, "stocksync_agent_stalls_total")  # one line per stall
    assert all(m.startswith("WH-LAX: hub 127.0.0.1:") for m in stalled)
    assert all("stream stalled: 20 events pending and no ack for" in m for m in stalled)
    assert "stalled" in link.state.last_error


def test_a_silent_hub_is_no_stall_while_nothing_is_pending(tmp_path: Path) -> None:
    db = tmp_path / "lax.db"
    record_offline(db, 0)

    async def a_while(link: AgentLink, hub: NeverAckingHub) -> None:
        while not link.connected:
            await asyncio.sleep(0.02)
        await asyncio.sleep(2.5)  # 2.5 x stall_after_s, idle

    link, hub = asyncio.run(_run_agent(db, a_while))
    assert _sample(link, "stocksync_agent_stalls_total") == 0
    assert hub.streams == 1


def test_the_hub_ends_a_stream_whose_agent_reports_pending_events_but_sends_none(
    tmp_path: Path,
) -> None:
    hub = HubChild(
        tmp_path / "hub.db",
        tmp_path / "hub.log",
        extra=("--http", "127.0.0.1:0"),
        env={"STOCKSYNC_HUB_STALL_AFTER_S": "1"},
    )
    try:
        hub.wait_ready(30)
        with grpc.insecure_channel(hub.target) as channel:
            s = establish(channel, "WH-STUCK")  # watermark 5
            backlog = sync_pb2.Backlog(high_seq=9, pending_events=4, oldest_pending_age_ms=10)
            s.send(ping=sync_pb2.Ping(sent_at_unix_ms=1, backlog=backlog))
            err = s.error()
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "stream stalled: watermark 5 has not moved" in err.details()
        assert "4 events pending" in err.details()
        scrape = Scrape(f"http://127.0.0.1:{hub.http_port}/metrics")
        assert scrape.get("stocksync_hub_stalls_total", warehouse="WH-STUCK") == 1
        wait_for(lambda: "WH-STUCK: stream stalled" in hub.text(), 10, "the log line")
    finally:
        hub.stop()

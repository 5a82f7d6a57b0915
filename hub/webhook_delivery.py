"""Webhook delivery: one task per subscription drains its part of the outbox.

The events are already durable in the hub's store (written with the change
they report, see :mod:`stocksync.hub.notices`). Each subscription's task
POSTs its pending deliveries one at a time, oldest first — so a receiver
gets each reservation's events in order — and marks each ``delivered``
(through the hub's writer) once the receiver answered 2xx. A failure (no
connection, a timeout, any other status) is retried with exponential
backoff and full jitter (tenacity), capped at ``webhook_backoff_max_s``,
forever: a receiver down for an hour gets everything within that cap of its
return. A hub killed before a delivery resends it after the restart;
a receiver may thus see an event twice, always with the same event id.

A failing subscription is reported once per incident (one log line when it
starts failing, one when it delivers again) and counted in
:class:`WebhookStats`; it never slows the others: each has its own task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

from stocksync.clock import wall_ms, wall_s
from stocksync.errors import InvalidArgument, StocksyncError
from stocksync.hub.notices import Notices, OutboxEvent
from stocksync.hub.storage import Delivery, HubStore, WriteTx
from stocksync.hub.writer import Writer
from stocksync.webhooks import SIGNATURE_HEADER, TEST_EVENT, WebhookSubscription, sign

if TYPE_CHECKING:
    import aiohttp

__all__ = ["PENDING_BATCH", "PRUNE_EVERY_S", "WebhookDelivery", "WebhookStats"]

log = logging.getLogger("stocksync.hub.webhooks")

PENDING_BATCH = 100
"""Pending deliveries read from the store at a time, per subscription."""
PRUNE_EVERY_S = 600.0
"""How often delivered events past their retention are pruned."""
PRUNE_LIMIT = 5000
"""Most events pruned per transaction (keeps each commit short)."""


class DeliveryFailed(Exception):
    """The receiver did not take the event (the text says why)."""


@dataclass
class WebhookStats:
    """One subscription's counts, for metrics (see README "Integrating a shop")."""

    delivered_total: int = 0
    """Deliveries the receiver answered 2xx (``stocksync_webhook_deliveries_total``)."""
    failed_attempts_total: int = 0
    """Attempts that failed (``stocksync_webhook_failed_attempts_total``)."""
    incidents_total: int = 0
    """Times the subscription started failing (``stocksync_webhook_incidents_total``)."""
    failing: bool = False
    """Its oldest pending delivery failed last time (``stocksync_webhook_failing``)."""
    consecutive_failures: int = 0


class WebhookDelivery:
    """Delivers the outbox to every configured subscription.

    Args:
        subscriptions: from the hub's configuration.
        store: the hub's store (the outbox lives there).
        writer: the hub's single writer (delivery states go through it).
        reads: the executor store reads run on.
        notices: the event source; its listeners wake the delivery tasks.
        timeout_s: one POST not answered within this failed.
        backoff_initial_s: first retry delay bound.
        backoff_max_s: retry delay cap.
        retention_hours: delivered events older than this are pruned.
    """

    def __init__(
        self,
        subscriptions: Sequence[WebhookSubscription],
        store: HubStore,
        writer: Writer,
        reads: Executor,
        notices: Notices,
        timeout_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        retention_hours: float = 168.0,
    ) -> None:
        self.subscriptions = {s.label: s for s in subscriptions}
        self.store = store
        self.writer = writer
        self.reads = reads
        self.notices = notices
        self.timeout_s = timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.retention_hours = retention_hours
        self.stats = {label: WebhookStats() for label in self.subscriptions}
        self._wake = {label: asyncio.Event() for label in self.subscriptions}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        notices.listeners.append(self._recorded)

    async def start(self) -> None:
        """Start a delivery task per subscription (and the pruning)."""
        if self.subscriptions:
            # aiohttp's client loads the system's CA certificates on import (~0.1 s
            # of every start): a hub without subscriptions never needs it.
            import aiohttp

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": "stocksync-hub"},
            )
        for label in self.subscriptions:
            self._tasks.append(asyncio.create_task(self._run(label), name=f"webhook {label}"))
        self._tasks.append(asyncio.create_task(self._prune_forever(), name="webhook prune"))

    async def stop(self) -> None:
        """Stop delivering (what is pending stays in the outbox for the next start)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _recorded(self, events: Sequence[OutboxEvent]) -> None:
        for event in events:
            for label in event.subscriptions:
                wake = self._wake.get(label)
                if wake is not None:
                    wake.set()

    # -- operator calls ------------------------------------------------------------

    def _labels(self, subscription: str) -> list[str]:
        if not subscription:
            return list(self.subscriptions)
        if subscription not in self.subscriptions:
            known = ", ".join(self.subscriptions) or "none configured"
            raise InvalidArgument(f"no webhook subscription {subscription!r} ({known})")
        return [subscription]

    async def send_test(self, subscription: str = "") -> OutboxEvent:
        """Queue a ``webhook.test`` event for one subscription (or all) through
        the outbox, like any other event; returns it."""
        labels = self._labels(subscription)
        if not labels:
            raise InvalidArgument("no webhook subscriptions are configured")
        unix_ms = wall_ms()
        event = self.notices.event_for(TEST_EVENT, {"test": True}, unix_ms, labels)
        await self.writer.write(lambda tx: tx.add_webhook_events([event]))
        self._recorded([event])
        return event

    async def replay(self, from_event_id: str, subscription: str = "") -> int:
        """Send again every event from ``from_event_id`` on (to one subscription,
        or all), in order; returns how many deliveries were made pending again.

        Raises:
            InvalidArgument: an unknown subscription or an empty id.
            UnknownEvent: no such event in the outbox.
        """
        if not from_event_id:
            raise InvalidArgument("event id is empty")
        labels = self._labels(subscription)
        count: int = await self.writer.write(lambda tx: tx.replay_webhooks(from_event_id, labels))
        for label in labels:
            self._wake[label].set()
        return count

    async def deliveries(
        self, subscription: str = "", pending_only: bool = False, limit: int = 100
    ) -> list[Delivery]:
        """Deliveries, newest first, as stored."""
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be 1 to 10,000, got {limit}")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.reads, self.store.webhook_deliveries, subscription or None, pending_only, limit
        )

    # -- delivery --------------------------------------------------------------------

    async def _run(self, label: str) -> None:
        wake = self._wake[label]
        loop = asyncio.get_running_loop()
        while True:
            wake.clear()  # before the read: an event recorded after it wakes us
            try:
                batch = await loop.run_in_executor(
                    self.reads, self.store.webhook_pending, label, PENDING_BATCH
                )
            except StocksyncError as e:
                log.warning("webhook %s: cannot read the outbox (%s); retrying", label, e)
                await asyncio.sleep(self.backoff_initial_s)
                continue
            if not batch:
                await wake.wait()
                continue
            for delivery in batch:
                await self._deliver(label, delivery)

    async def _deliver(self, label: str, delivery: Delivery) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(DeliveryFailed),
            wait=wait_random_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
            stop=stop_never,
            before_sleep=partial(self._failed, label, delivery),
            reraise=True,
        ):
            with attempt:
                await self._post(self.subscriptions[label], delivery)
        stats = self.stats[label]
        if stats.failing:
            log.warning(
                "webhook %s: delivering again (after %d failed attempts)",
                label,
                stats.consecutive_failures,
            )
        stats.failing, stats.consecutive_failures = False, 0
        stats.delivered_total += 1
        await self._mark(label, delivery, "")

    async def _post(self, subscription: WebhookSubscription, delivery: Delivery) -> None:
        import aiohttp  # loaded by start(), as there are subscriptions

        assert self._session is not None
        body = delivery.body.encode()
        headers = {
            "Content-Type": "application/json",
            "Stocksync-Event-Id": delivery.event_id,
            "Stocksync-Event-Type": delivery.type,
            SIGNATURE_HEADER: sign(subscription.secret, int(wall_s()), body),
        }
        try:
            async with self._session.post(
                subscription.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    raise DeliveryFailed(f"HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise DeliveryFailed(_why(e)) from None

    async def _failed(self, label: str, delivery: Delivery, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        why = str(error) or type(error).__name__
        stats = self.stats[label]
        stats.failed_attempts_total += 1
        stats.consecutive_failures += 1
        if not stats.failing:
            stats.failing = True
            stats.incidents_total += 1
            log.error(
                "webhook %s: %s failed (%s); retrying with backoff up to %g s",
                label,
                delivery.event_id,
                why,
                self.backoff_max_s,
            )
        await self._mark(label, delivery, why)

    async def _mark(self, label: str, delivery: Delivery, error: str) -> None:
        unix_ms = wall_ms()
        try:
            await self.writer.write(
                lambda tx: tx.webhook_attempted(label, delivery.event_id, error, unix_ms)
            )
        except StocksyncError as e:
            # Not marked: the event stays pending and goes again (the same id).
            log.warning("webhook %s: cannot record %s (%s)", label, delivery.event_id, e)
            await asyncio.sleep(self.backoff_initial_s)

    async def _prune_forever(self) -> None:
        while True:
            cutoff = wall_ms() - int(self.retention_hours * 3_600_000)
            try:
                pruned: int = await self.writer.write(partial(_prune, before_unix_ms=cutoff))
            except StocksyncError as e:
                log.debug("webhook pruning skipped: %s", e)
                pruned = 0
            if pruned < PRUNE_LIMIT:
                await asyncio.sleep(PRUNE_EVERY_S)


def _prune(tx: WriteTx, before_unix_ms: int) -> int:
    return tx.prune_webhooks(before_unix_ms, PRUNE_LIMIT)


def _why(error: BaseException) -> str:
    import aiohttp  # loaded: only a delivery fails

    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect: {error.os_error.strerror or error}"
    return str(error) or type(error).__name__

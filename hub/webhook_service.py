"""The gRPC adapter for the webhook outbox (``WebhookService``), for operators.

``stocksync-hub webhooks list | test | replay`` talk to the running hub
through it: the hub is its store's only writer, and its delivery tasks must
learn at once of a test event or a replay.
"""

from __future__ import annotations

from typing import Any

import grpc

from stocksync.grpc_edge import guarded
from stocksync.hub.storage import Delivery
from stocksync.hub.webhook_delivery import WebhookDelivery
from stocksync.v1 import webhooks_pb2, webhooks_pb2_grpc

__all__ = ["SERVICE_NAME", "WebhookServicer", "delivery_message"]

SERVICE_NAME = webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].full_name


def delivery_message(d: Delivery) -> webhooks_pb2.WebhookDelivery:
    """A WebhookDelivery message of ``d`` (its body is left out)."""
    return webhooks_pb2.WebhookDelivery(
        event_id=d.event_id,
        type=d.type,
        reservation_id=d.reservation_id,
        subscription=d.subscription,
        state=d.state,
        attempts=d.attempts,
        last_error=d.last_error,
        created_unix_ms=d.created_unix_ms,
        last_attempt_unix_ms=d.last_attempt_unix_ms,
        delivered_unix_ms=d.delivered_unix_ms,
    )


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    """Deliveries, test events and replays.

    Args:
        delivery: the hub's webhook delivery.
    """

    def __init__(self, delivery: WebhookDelivery) -> None:
        self.delivery = delivery

    @guarded
    async def ListDeliveries(
        self,
        request: webhooks_pb2.ListDeliveriesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> webhooks_pb2.ListDeliveriesResponse:
        """Deliveries, newest event first, and each subscription's state."""
        found = await self.delivery.deliveries(
            request.subscription, request.pending_only, request.limit or 100
        )
        return webhooks_pb2.ListDeliveriesResponse(
            deliveries=[delivery_message(d) for d in found],
            subscriptions=[
                webhooks_pb2.WebhookSubscriptionStatus(
                    name=label,
                    url=s.url,
                    events=list(s.events),
                    failing=self.delivery.stats[label].failing,
                    delivered_total=self.delivery.stats[label].delivered_total,
                    failed_attempts_total=self.delivery.stats[label].failed_attempts_total,
                )
                for label, s in self.delivery.subscriptions.items()
            ],
        )

    @guarded
    async def SendTest(
        self,
        request: webhooks_pb2.SendTestRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> webhooks_pb2.SendTestResponse:
        """Queue a webhook.test event."""
        event = await self.delivery.send_test(request.subscription)
        return webhooks_pb2.SendTestResponse(
            event_id=event.event_id, subscriptions=list(event.subscriptions)
        )

    @guarded
    async def Replay(
        self,
        request: webhooks_pb2.ReplayRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> webhooks_pb2.ReplayResponse:
        """Send again from one event on."""
        count = await self.delivery.replay(request.from_event_id, request.subscription)
        return webhooks_pb2.ReplayResponse(deliveries=count)

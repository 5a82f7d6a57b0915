"""``stocksync-hub webhooks list | test | replay``: the webhook outbox of a running hub.

These talk to the running hub (``WebhookService``, with the connection
options of every client command) rather than open its store beside it: the
hub is the store's only writer, its delivery tasks must hear of a test event
or a replay at once, and operators run these from elsewhere, as they run
``conflicts``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from stocksync.hub.cli_client import client_options, json_option, query
from stocksync.v1 import webhooks_pb2, webhooks_pb2_grpc

__all__ = ["webhooks"]


def _call(target: str, method: str, request: Any, **conn: Any) -> Any:
    return query(target, method, request, stub=webhooks_pb2_grpc.WebhookServiceStub, **conn)


def delivery_json(d: webhooks_pb2.WebhookDelivery) -> dict[str, Any]:
    """A delivery as ``webhooks list --json`` prints it."""
    return {
        "event_id": d.event_id,
        "type": d.type,
        "reservation_id": d.reservation_id or None,
        "subscription": d.subscription,
        "state": d.state,
        "attempts": d.attempts,
        "last_error": d.last_error or None,
        "created_unix_ms": d.created_unix_ms,
        "last_attempt_unix_ms": d.last_attempt_unix_ms or None,
        "delivered_unix_ms": d.delivered_unix_ms or None,
    }


@click.group()
def webhooks() -> None:
    """See webhook deliveries, send a test event, send events again.

    Example:

        stocksync-hub webhooks list --pending --insecure
    """


@webhooks.command("list")
@click.option("--subscription", default="", help="Only this subscription (its name).")
@click.option("--pending", "pending_only", is_flag=True, help="Only deliveries not yet taken.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=50, show_default=True)
@client_options
@json_option
def list_(
    subscription: str, pending_only: bool, limit: int, target: str, as_json: bool, **conn: Any
) -> None:
    """List deliveries, newest first: event, type, subscription, state, attempts, last error.

    Each subscription's line says whether it is failing now.

    Example:

        stocksync-hub webhooks list --subscription shop --pending --insecure
    """
    request = webhooks_pb2.ListDeliveriesRequest(
        subscription=subscription, pending_only=pending_only, limit=limit
    )
    reply = _call(target, "ListDeliveries", request, **conn)
    items = [delivery_json(d) for d in reply.deliveries]
    if as_json:
        click.echo(json.dumps(items))
        return
    for s in reply.subscriptions:
        state = "FAILING" if s.failing else "ok"
        click.echo(
            f"subscription {s.name}: {state}, {s.delivered_total} delivered, "
            f"{s.failed_attempts_total} failed attempts ({s.url})"
        )
    if not items:
        click.echo("no deliveries")
        return
    for d in items:
        error = f"  {d['last_error']}" if d["last_error"] else ""
        click.echo(
            f"{d['event_id']}  {d['type']:<24}{d['subscription']:<16}{d['state']:<10}"
            f"{d['attempts']:>3}{error}"
        )


@webhooks.command()
@click.option("--subscription", default="", help="Only this subscription (default: every one).")
@click.option(
    "--wait",
    type=click.FloatRange(min=0, max=600),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the receiver to take it (0: do not wait).",
)
@client_options
def test(subscription: str, wait: float, target: str, **conn: Any) -> None:
    """Send a webhook.test event through the outbox, like any other event.

    Exits 0 once every receiver took it; 1 (with the last error) if one has
    not within --wait seconds. Events queued before it go first.

    Example:

        stocksync-hub webhooks test --subscription shop --insecure
    """
    request = webhooks_pb2.SendTestRequest(subscription=subscription)
    reply = _call(target, "SendTest", request, **conn)
    click.echo(f"{reply.event_id} queued for {', '.join(reply.subscriptions)}")
    if wait == 0:
        return
    deadline = time.monotonic() + wait
    while True:
        found = [
            d
            for d in _call(
                target, "ListDeliveries", webhooks_pb2.ListDeliveriesRequest(limit=1000), **conn
            ).deliveries
            if d.event_id == reply.event_id
        ]
        if found and all(d.state == "delivered" for d in found):
            click.echo(f"{reply.event_id} delivered")
            return
        if time.monotonic() >= deadline:
            waiting = [
                f"{d.subscription} ({d.last_error or 'not tried yet'})"
                for d in found
                if d.state != "delivered"
            ]
            raise click.ClickException(
                f"{reply.event_id} not delivered within {wait:g} s: {', '.join(waiting)}"
            )
        time.sleep(0.2)


@webhooks.command()
@click.argument("event_id")
@click.option("--subscription", default="", help="Only this subscription (default: every one).")
@client_options
def replay(event_id: str, subscription: str, target: str, **conn: Any) -> None:
    """Send every event from EVENT_ID on again, in order (same ids, same bodies).

    Example:

        stocksync-hub webhooks replay evt_0192f0c1-... --subscription shop --insecure
    """
    request = webhooks_pb2.ReplayRequest(from_event_id=event_id, subscription=subscription)
    reply = _call(target, "Replay", request, **conn)
    click.echo(f"{reply.deliveries} deliveries from {event_id} on queued again")

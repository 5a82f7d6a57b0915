"""``Wrapped``: method handlers wrapped once at registration, on a real server
(port 0). Each test runs its own event loop with ``asyncio.run``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from stocksync.grpc_edge import Wrapped, guard_decoding

SERVICE = "test.Echo"


async def _echo(request: health_pb2.HealthCheckRequest, context: Any) -> bytes:
    return request.service.encode()


def _handlers() -> dict[str, Any]:
    return {
        "Echo": grpc.unary_unary_rpc_method_handler(
            _echo, request_deserializer=health_pb2.HealthCheckRequest.FromString
        )
    }


class Tag:
    """A wrap that marks the response with ``name`` and counts its wrappings."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.wrapped: list[str] = []

    def __call__(self, method: str, handler: Any) -> Any:
        self.wrapped.append(method)
        inner = handler.unary_unary
        name = self.name.encode()

        async def tagged(request: Any, context: Any) -> bytes:
            return name + b"(" + await inner(request, context) + b")"

        return handler._replace(unary_unary=tagged)


@contextlib.asynccontextmanager
async def served(way: str) -> AsyncIterator[tuple[grpc.aio.Channel, Tag]]:
    """A server on port 0 whose service is registered ``way`` (generic or
    registered handlers) through Wrapped(outer, inner, guard_decoding)."""
    outer, inner = Tag("outer"), Tag("inner")
    server = Wrapped(grpc.aio.server(), outer, inner, guard_decoding)
    if way == "generic":
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, _handlers()),)
        )
    else:
        server.add_registered_method_handlers(SERVICE, _handlers())
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, outer
    finally:
        await channel.close()
        await server.stop(None)


@pytest.mark.parametrize("way", ["generic", "registered"])
def test_each_method_is_wrapped_once_first_wrap_outermost(way: str) -> None:
    async def scenario() -> None:
        async with served(way) as (channel, outer):
            call = channel.unary_unary(f"/{SERVICE}/Echo")
            requests = [health_pb2.HealthCheckRequest(service=f"s{i}") for i in range(20)]
            answers = await asyncio.gather(*(call(r.SerializeToString()) for r in requests))
            assert answers == [f"outer(inner(s{i}))".encode() for i in range(20)]
            assert outer.wrapped == [f"/{SERVICE}/Echo"]  # once, not once per call

    asyncio.run(scenario())


@pytest.mark.parametrize("way", ["generic", "registered"])
def test_undecodable_request_and_unknown_method(way: str) -> None:
    async def scenario() -> None:
        async with served(way) as (channel, _):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await channel.unary_unary(f"/{SERVICE}/Echo")(b"\xff\xff\xff")
            assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert (
                bad.value.details()
                == "request is not a valid grpc.health.v1.HealthCheckRequest message"
            )
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary(f"/{SERVICE}/Nope")(b"")
            assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED

    asyncio.run(scenario())

"""Where the domain meets gRPC, for the hub and the agent's local API: one
table from errors to status codes, requests that are not valid protobuf, and
server reflection.

- Every domain error (:class:`stocksync.errors.StocksyncError`) carries its
  :class:`~stocksync.errors.Status`; :func:`abort` sends it as the gRPC status
  of the same name, with the error's detail and trailers. No service picks a
  code at its call site.
- gRPC Python answers a request that does not parse with ``UNKNOWN`` and the
  name of a Python exception class. :class:`DecodeGuard` wraps every method's
  request deserializer so such a request gets ``INVALID_ARGUMENT`` and a
  plain detail instead, before any service code runs.
- Reflection is served as ``grpc.reflection.v1`` (what grpcurl and newer
  clients ask first) and ``v1alpha``; the two are the same messages under
  two names, so one servicer answers both.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from stocksync.errors import Status, StocksyncError

__all__ = [
    "REFLECTION_V1",
    "DecodeGuard",
    "Undecodable",
    "abort",
    "enable_reflection",
    "grpc_code",
    "guarded",
]

log = logging.getLogger("stocksync.grpc")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


_LEVEL = {Status.RESOURCE_EXHAUSTED: logging.DEBUG}
"""A refusal worth no line at INFO: "sold out" is a shop's everyday answer
(one line per refused reserve would flood the log on a busy drop)."""


def grpc_code(error: StocksyncError) -> grpc.StatusCode:
    """The gRPC status code of a domain error: the one table, by name."""
    return grpc.StatusCode[error.status.name]


async def abort(context: Any, error: StocksyncError) -> NoReturn:
    """End the call with ``error``'s status, detail and trailers.

    Args:
        context: the servicer context of the call.
        error: what went wrong.
    """
    code = grpc_code(error)
    level = _LEVEL.get(error.status, logging.INFO)
    if log.isEnabledFor(level):
        log.log(level, "%s: %s: %s", _peer(context), code.name, error.detail)
    trailers = error.trailers()
    if trailers:
        context.set_trailing_metadata(trailers)
    await context.abort(code, error.detail)
    raise AssertionError("unreachable")  # context.abort raises


def _peer(context: Any) -> str:
    try:
        return str(context.peer())
    except Exception:  # a context without a peer (a closed call)
        return "peer"


R = TypeVar("R")


def guarded(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Decorate a unary servicer method: a domain error it raises becomes the
    call's status (via :func:`abort`)."""

    async def wrapper(self: Any, request: Any, context: Any) -> R:
        try:
            return await method(self, request, context)
        except StocksyncError as e:
            await abort(context, e)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Undecodable:
    """Stands in for a request that did not parse, so the handler can refuse it."""

    def __init__(self, type_name: str) -> None:
        self.detail = f"request is not a valid {type_name} message"


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = _message_name(deserializer)

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return Undecodable(type_name)

    return parse


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "protobuf"))


async def _refuse(context: Any, request: Undecodable) -> NoReturn:
    log.info("%s: INVALID_ARGUMENT: %s", _peer(context), request.detail)
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.detail)
    raise AssertionError("unreachable")


def _wrap_single(behavior: Any) -> Any:
    """A unary-request behavior that refuses an undecodable request."""
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            async for response in behavior(request, context):
                yield response

        return stream

    async def unary(request: Any, context: Any) -> Any:
        if isinstance(request, Undecodable):
            await _refuse(context, request)
        return await behavior(request, context)

    return unary


def _wrap_streaming(behavior: Any) -> Any:
    """A streaming-request behavior whose request iterator refuses an
    undecodable message (handlers that call ``context.read()`` check for
    :class:`Undecodable` themselves)."""

    def checked(requests: Any, context: Any) -> AsyncIterator[Any]:
        async def gen() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, Undecodable):
                    await _refuse(context, request)
                yield request

        return gen()

    if inspect.isasyncgenfunction(behavior):

        async def stream(requests: Any, context: Any) -> AsyncIterator[Any]:
            async for response in behavior(checked(requests, context), context):
                yield response

        return stream

    async def unary(requests: Any, context: Any) -> Any:
        return await behavior(checked(requests, context), context)

    return unary


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Answers requests that are not valid protobuf with INVALID_ARGUMENT."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Wrap the method's deserializer and behavior."""
        handler: Any = await continuation(handler_call_details)
        if handler is None or not hasattr(handler, "_replace"):
            return handler  # type: ignore[no-any-return]
        changes: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
        for name in ("unary_unary", "unary_stream"):
            if getattr(handler, name) is not None:
                changes[name] = _wrap_single(getattr(handler, name))
        for name in ("stream_unary", "stream_stream"):
            if getattr(handler, name) is not None:
                changes[name] = _wrap_streaming(getattr(handler, name))
        return handler._replace(**changes)  # type: ignore[no-any-return]


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection as ``grpc.reflection.v1`` and ``v1alpha`` for ``service_names``."""
    names = [*service_names, reflection.SERVICE_NAME, REFLECTION_V1]
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    # v1 and v1alpha are the same messages under two package names: the same
    # servicer answers v1 requests with the v1alpha message classes.
    v1 = grpc.method_handlers_generic_handler(
        REFLECTION_V1,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((v1,))

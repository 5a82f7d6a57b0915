"""Mutual TLS credentials for both ends (DESIGN §9).

One certificate per warehouse: its subject common name is the warehouse id,
and the hub lets a stream speak only for the warehouse its certificate names.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from stocksync.config import AgentConfig, HubConfig

__all__ = ["channel_credentials", "server_credentials"]


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def channel_credentials(config: AgentConfig) -> grpc.ChannelCredentials:
    """The agent's client credentials: its certificate, and the CA to trust."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(config.tls_ca),
        private_key=_read(config.tls_key),
        certificate_chain=_read(config.tls_cert),
    )


def server_credentials(config: HubConfig) -> grpc.ServerCredentials:
    """The hub's server credentials; every client must present a certificate."""
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key), _read(config.tls_cert))],
        root_certificates=_read(config.tls_ca),
        require_client_auth=True,
    )

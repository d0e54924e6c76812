"""TLS, as an option: shards serve ``wss://``/``https://`` with ``--tls-cert``/``--tls-key``, the
coordinator ``https://`` with ``splitasr up --tls-cert/--tls-key`` (or ``tls_cert``/``tls_key`` in
the cluster YAML); every client (edge, stage client, shard -> coordinator link, coordinator probes,
the admin CLI) verifies server
certificates against the system's CAs, or against ``$SPLITASR_TLS_CA`` (a PEM file: a private CA or
a self-signed certificate) when it is set. Child processes inherit the variable."""

from __future__ import annotations

import os
import ssl
from functools import lru_cache

import aiohttp

from splitasr.shared.errors import ConfigError

CA_ENV = "SPLITASR_TLS_CA"


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or newer) for a certificate chain and its key; ConfigError if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert_file} with key {key_file}: {exc}") from None
    return context


@lru_cache(maxsize=4)
def _client_context(ca_file: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA file named by ${CA_ENV} ({ca_file}): {exc}") from None


def client_context() -> ssl.SSLContext:
    """A client context for ``urllib`` (CLI, tests): ``$SPLITASR_TLS_CA``, else the system's CAs."""
    ca_file = os.environ.get(CA_ENV)
    return _client_context(ca_file) if ca_file else ssl.create_default_context()


def client_ssl() -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` takes: the context trusting ``$SPLITASR_TLS_CA``, else True (system CAs)."""
    return client_context() if os.environ.get(CA_ENV) else True


def connector() -> aiohttp.TCPConnector:
    """A connector for a client session: TLS (for wss:// and https:// urls) verified as above."""
    return aiohttp.TCPConnector(ssl=client_ssl())

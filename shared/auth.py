"""Cluster identity: one secret, and every credential derived from it with HMAC-SHA256.

- **Shard token** ``HMAC(secret, "shard|<shard_id>")``: a shard proves to the coordinator that it
  was started by the cluster, and its id is bound to it (one shard cannot speak for another).
- **Stage token** ``HMAC(secret, "stage")``: carried by every stage-to-stage websocket.
- **Device token** ``<device_id>.<expires>.<sig>``: handed to an edge device by an operator
  (``splitasr token``); checked at HELLO; a session belongs to the device that opened it.
- **Route ticket** ``<expires>.<sig>`` over (device, session, shard): handed out by the coordinator
  with each stage-0 candidate of ``/v1/route``; a shard started with ``--require-ticket`` admits a
  session only with a ticket for itself, so streams go where the coordinator sends them.

The secret comes from ``$SPLITASR_CLUSTER_SECRET`` or the file named by
``$SPLITASR_CLUSTER_SECRET_FILE``; ``splitasr up`` generates one when neither is set and hands it to
the shards it starts through their environment (never their command line). It is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from splitasr.shared.errors import AuthError, ConfigError

SECRET_ENV = "SPLITASR_CLUSTER_SECRET"
SECRET_FILE_ENV = "SPLITASR_CLUSTER_SECRET_FILE"
DEVICE_TOKEN_ENV = "SPLITASR_DEVICE_TOKEN"
MIN_SECRET_CHARS = 16
MAX_DEVICE_ID_CHARS = 128
ROUTE_TICKET_TTL_S = 600.0  # a reconnect later than this asks the coordinator for a fresh ticket


def generate_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The cluster secret from the environment (value, else file), or None when neither is set."""
    env = os.environ if environ is None else environ
    value = env.get(SECRET_ENV, "")
    if not value and env.get(SECRET_FILE_ENV):
        try:
            value = Path(env[SECRET_FILE_ENV]).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the cluster secret file named by ${SECRET_FILE_ENV}: {exc}") from None
    if not value:
        return None
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(f"the cluster secret must have at least {MIN_SECRET_CHARS} characters")
    return value


def _sign(secret: str, message: str) -> str:
    # surrogatepass: any str can be signed (a JSON "\ud83d" decodes to a lone surrogate)
    return hmac.new(secret.encode(), message.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


@dataclass(frozen=True)
class ClusterAuth:
    """Mints and checks the cluster's credentials. ``repr`` never shows the secret."""

    secret: str = field(repr=False)

    def shard_token(self, shard_id: str) -> str:
        return _sign(self.secret, f"shard|{shard_id}")

    def check_shard(self, shard_id: str, token: str) -> None:
        if not _equal(token, self.shard_token(shard_id)):
            raise AuthError(f"bad credential for shard {shard_id!r}")

    def stage_token(self) -> str:
        return _sign(self.secret, "stage")

    def check_stage(self, token: str) -> None:
        if not _equal(token, self.stage_token()):
            raise AuthError("stage requests need the cluster's stage credential")

    def _stamp(self, claim: str, ttl_s: float, now: float | None) -> str:
        """``<expires>.<HMAC(secret, "<claim>|<expires>")>``: the expiring part of device tokens and
        route tickets, minted here and checked by :meth:`_check_stamp` only."""
        expires = int((time.time() if now is None else now) + ttl_s)
        return f"{expires}.{_sign(self.secret, f'{claim}|{expires}')}"

    def _check_stamp(self, claim: str, stamp: list[str], now: float | None, invalid: str, expired: str) -> None:
        expires, sig = stamp
        if not _equal(sig, _sign(self.secret, f"{claim}|{expires}")):  # callers checked ``expires`` is digits
            raise AuthError(invalid)
        if int(expires) < (time.time() if now is None else now):
            raise AuthError(expired)

    def device_token(self, device_id: str, ttl_s: float, now: float | None = None) -> str:
        if not device_id or len(device_id) > MAX_DEVICE_ID_CHARS or "." in device_id:
            raise ConfigError(f"device id must be 1..{MAX_DEVICE_ID_CHARS} characters without '.', got {device_id!r}")
        if ttl_s <= 0:
            raise ConfigError(f"token lifetime must be positive, got {ttl_s}")
        return f"{device_id}.{self._stamp(f'device|{device_id}', ttl_s, now)}"

    def check_device(self, device_id: str, token: str, now: float | None = None) -> None:
        """Raise :class:`AuthError` unless ``token`` was minted for ``device_id`` and has not expired."""
        parts = token.split(".") if isinstance(token, str) else []
        if len(parts) != 3 or not parts[1].isdigit():
            raise AuthError("a device token is required (HELLO.token: <device_id>.<expires>.<signature>)")
        invalid = f"device token not valid for device {device_id!r}"
        if parts[0] != device_id:
            raise AuthError(invalid)
        self._check_stamp(f"device|{device_id}", parts[1:], now, invalid, f"device token of {device_id!r} expired")

    def route_ticket(
        self,
        device_id: str,
        session_id: str,
        shard_id: str,
        ttl_s: float = ROUTE_TICKET_TTL_S,
        now: float | None = None,
    ) -> str:
        return self._stamp(f"route|{device_id}|{session_id}|{shard_id}", ttl_s, now)

    def check_route_ticket(
        self, device_id: str, session_id: str, shard_id: str, ticket: str, now: float | None = None
    ) -> None:
        """Raise :class:`AuthError` unless ``ticket`` routes this device's session to ``shard_id`` and is fresh."""
        parts = ticket.split(".") if isinstance(ticket, str) else []
        if len(parts) != 2 or not parts[0].isdigit():
            raise AuthError(f"shard {shard_id} admits sessions with a route ticket from the coordinator only")
        invalid = f"route ticket not valid for this session on shard {shard_id}"
        self._check_stamp(f"route|{device_id}|{session_id}|{shard_id}", parts, now, invalid, "route ticket expired")


def bearer(request_headers) -> str:
    """The token of an ``Authorization: Bearer …`` header, or ''."""
    header = request_headers.get("Authorization", "")
    return header[7:] if header.startswith("Bearer ") else ""


def ensure_cluster_secret() -> str:
    """The cluster secret from the environment, else a new one exported to this process's
    environment, so that every shard process it starts (and a co-located demo edge) shares it."""
    secret = secret_from_env()
    if secret is None:
        secret = os.environ[SECRET_ENV] = generate_secret()
    return secret


def edge_token(device_id: str, given: str = "") -> str:
    """The device token an edge presents: ``given``, else ``$SPLITASR_DEVICE_TOKEN``, else one minted
    from the cluster secret when this process holds it (a co-located demo or test edge), else ''."""
    if given or os.environ.get(DEVICE_TOKEN_ENV):
        return given or os.environ[DEVICE_TOKEN_ENV]
    secret = secret_from_env()
    return ClusterAuth(secret).device_token(device_id, ttl_s=86_400) if secret else ""

"""Configuration of one shard process."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from splitasr.shared.auth import ClusterAuth
from splitasr.shared.control import STAGES
from splitasr.shared.errors import ConfigError

ROLES = STAGES  # stage-0 (session owner, encoder A), encoder B, decoder (cross-KV + steps)
NEXT_ROLE = {"enc_a": "enc_b", "enc_b": "dec"}


@dataclass(frozen=True)
class ShardConfig:
    model: str = "tiny.en"
    role: str = "enc_a"
    next_urls: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 0
    threads: int = 1
    int8: bool = False
    device: str = "auto"
    partial_interval_s: float = 0.4
    pad_s: float = 2.0
    max_utterance_s: float = 28.0
    activation_dtype: str = "float16"
    stage_timeout_s: float = 30.0
    ready_file: str | None = None
    max_batch: int = 16  # decoder: sequences in the running batch
    encoder_max_batch: int = 0  # encoders: 0 = the device default (1 on CPU, 8 on CUDA)
    max_sessions: int = 64  # edge sessions a stage-0 shard admits
    queue_budget_s: float = 0.5  # queue delay budget driving the overload levels
    cache_ttl_s: float = 30.0  # results by feature hash (0 disables)
    speculate_after_s: float = 0.25  # pause (by the edge's hint) after which the FINAL starts early
    coordinator_url: str | None = None  # register + heartbeat there; resolve the next stage there
    shard_id: str | None = None  # default: generated (<model>-<role>-<8 hex>)
    zone: str = "local"
    region: str = "local"
    config_version: str = "default"  # the pool version this shard runs (reported at registration)
    inject_fault: str | None = None  # stage 0: slow:MS | empty | garbage (canary/chaos tests; faults.py)
    heartbeat_s: float = 1.0
    orphan_after_s: float = 0.0  # exit when the coordinator has been unreachable this long (0: never)
    tls_cert: str | None = None  # serve wss:// and https:// with this certificate chain (PEM) ...
    tls_key: str | None = None  # ... and its key
    secret: str | None = field(default=None, repr=False)  # the cluster secret (shared/auth.py)
    insecure: bool = False  # serve without credentials (development on a closed host only)
    require_ticket: bool = False  # stage 0: admit a session only with the coordinator's route ticket for it
    whole_chain: bool = False  # stage 0: run encoder B and the decoder in this process (no next stage)
    hello_timeout_s: float = 10.0  # a connection must say HELLO within this
    idle_timeout_s: float = 60.0  # a session with no frame for this long is closed
    max_open_utterances: int = 4  # per session: utterances with frames and no EOU yet
    max_sessions_per_device: int = 8
    max_audio_rate: float = 4.0  # per device: audio (feature frames) at most this many times real time ...
    audio_burst_s: float = 60.0  # ... after a burst of this many seconds (a reconnect replays what has no FINAL)

    @property
    def fault(self):
        from splitasr.cloud.shard.faults import Fault

        return Fault.parse(self.inject_fault) if self.inject_fault else None

    @property
    def auth(self) -> ClusterAuth | None:
        return ClusterAuth(self.secret) if self.secret else None

    def __post_init__(self) -> None:
        if self.shard_id is None:  # route tickets and registration name the shard: one id, fixed at start
            object.__setattr__(self, "shard_id", f"{self.model}-{self.role}-{uuid.uuid4().hex[:8]}")
        if self.inject_fault is not None:
            self.fault  # noqa: B018  (a bad spec is a ConfigError at start)
        if self.require_ticket and (self.role != "enc_a" or not self.secret):
            raise ConfigError("--require-ticket is for stage-0 (enc_a) shards with a cluster secret")
        if not self.secret and not self.insecure:
            raise ConfigError(
                "no cluster secret: set $SPLITASR_CLUSTER_SECRET (or $SPLITASR_CLUSTER_SECRET_FILE), "
                "or pass --insecure to serve without credentials"
            )
        if not (0.5 <= self.max_audio_rate <= 1000 and 1 <= self.audio_burst_s <= 3600):
            raise ConfigError("max_audio_rate must be in [0.5, 1000] and audio_burst_s in [1, 3600]")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.orphan_after_s and not 5 <= self.orphan_after_s <= 86_400:
            raise ConfigError(f"orphan_after_s must be 0 (never) or in [5, 86400], got {self.orphan_after_s}")
        for name in ("hello_timeout_s", "idle_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ConfigError(f"{name} must be in (0, 3600], got {getattr(self, name)}")
        if not 1 <= self.max_open_utterances <= 64 or self.max_sessions_per_device < 1:
            raise ConfigError("max_open_utterances must be in [1, 64] and max_sessions_per_device >= 1")
        if self.role not in ROLES:
            raise ConfigError(f"unknown stage role {self.role!r}; roles are {', '.join(ROLES)}")
        if self.whole_chain and self.next_urls:
            raise ConfigError("--whole-chain runs the later stages in this shard: it takes no --next")
        if self.role in NEXT_ROLE and not self.next_urls and not self.coordinator_url and not self.whole_chain:
            raise ConfigError(
                f"a {self.role} shard needs --next URL of a {NEXT_ROLE[self.role]} shard, or --coordinator URL"
            )
        if self.role == "dec" and self.next_urls:
            raise ConfigError("the decoder is the last stage: it takes no --next")
        if self.activation_dtype not in ("float16", "float32"):
            raise ConfigError(f"activation dtype must be float16 or float32, got {self.activation_dtype!r}")
        for name in ("max_batch", "max_sessions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder_max_batch < 0 or self.queue_budget_s <= 0 or self.cache_ttl_s < 0:
            raise ConfigError("encoder_max_batch and cache_ttl_s must be >= 0 and queue_budget_s > 0")
        if not 0 < self.max_utterance_s <= 28.0:
            raise ConfigError("max_utterance_s must be in (0, 28]: an utterance plus 2 s padding fits 30 s")

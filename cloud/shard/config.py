"""Configuration of one shard process."""

from __future__ import annotations

from dataclasses import dataclass

from splitasr.shared.errors import ConfigError

ROLES = ("enc_a", "enc_b", "dec")  # stage-0 (session owner, encoder A), encoder B, decoder (cross-KV + steps)
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
    partial_interval_s: float = 0.5
    pad_s: float = 2.0
    max_utterance_s: float = 28.0
    activation_dtype: str = "float16"
    stage_timeout_s: float = 30.0
    ready_file: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"unknown stage role {self.role!r}; roles are {', '.join(ROLES)}")
        if self.role in NEXT_ROLE and not self.next_urls:
            raise ConfigError(f"a {self.role} shard needs --next URL of a {NEXT_ROLE[self.role]} shard")
        if self.role == "dec" and self.next_urls:
            raise ConfigError("the decoder is the last stage: it takes no --next")
        if self.activation_dtype not in ("float16", "float32"):
            raise ConfigError(f"activation dtype must be float16 or float32, got {self.activation_dtype!r}")
        if not 0 < self.max_utterance_s <= 28.0:
            raise ConfigError("max_utterance_s must be in (0, 28]: an utterance plus 2 s padding fits 30 s")

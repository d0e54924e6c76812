"""Every error a splitasr user can hit, each with a message that says what to do."""

from __future__ import annotations


class SplitASRError(Exception):
    """Base class of all splitasr errors."""


class ModelNotFoundError(SplitASRError):
    """A model's weights are not installed (the message names the extra to install)."""


class UnknownModelError(SplitASRError):
    """A model name splitasr does not know."""


class ModelFormatError(SplitASRError):
    """A model file is corrupt, truncated or of an unsupported format."""


class ModelChecksumError(ModelFormatError):
    """Assembled model weights do not have the expected sha256."""


class ExportError(SplitASRError):
    """ONNX stages could not be exported (e.g. torch missing)."""


class AudioError(SplitASRError):
    """Audio could not be read or has an unusable format."""


class UnknownLanguageError(SplitASRError):
    """A language code the model does not support."""


class ConfigError(SplitASRError):
    """Bad configuration value."""


class ProtocolError(SplitASRError):
    """A frame that breaks the wire protocol; ``code`` goes into the ERROR frame sent back."""

    def __init__(self, code: str, message: str, retryable: bool = False, retry_after_ms: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms  # retry advice for retryable errors (e.g. overload)


class OverloadedError(ProtocolError):
    """The shard is past its latency budget or capacity; retry later or elsewhere."""

    def __init__(self, message: str, retry_after_ms: int = 1000):
        super().__init__("overloaded", message, retryable=True, retry_after_ms=retry_after_ms)


class StageUnavailableError(SplitASRError):
    """No replica of a downstream stage answered (all failed or timed out)."""


class ProcessStartError(SplitASRError):
    """A local shard or coordinator process exited or was not ready in time (its log tail says why)."""


class EdgeError(SplitASRError):
    """The edge agent could not deliver audio (no shard accepted the session, FINALs missing)."""


class SessionRejectedError(EdgeError):
    """Every shard tried refused the session with a retryable ERROR (overload or capacity)."""

    def __init__(self, message: str, code: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.code = code
        self.retry_after_ms = retry_after_ms


class AuthError(SplitASRError):
    """A missing, forged or expired credential (shard, stage, device or admin)."""

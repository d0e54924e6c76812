"""Whisper architecture sizes, read from CTranslate2 weights."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from splitasr.models.ct2 import CT2Model
from splitasr.shared.errors import ModelFormatError


@dataclass(frozen=True)
class WhisperDims:
    n_mels: int
    n_audio_ctx: int
    n_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_head: int
    n_text_layer: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_ct2(cls, model: CT2Model) -> WhisperDims:
        if model.spec_name != "WhisperSpec":
            raise ModelFormatError(f"expected a WhisperSpec model, got {model.spec_name!r}")

        def layers(prefix: str) -> int:
            pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
            return len({m.group(1) for k in model.variables if (m := pattern.match(k))})

        conv1 = model["encoder/conv1/weight"]
        return cls(
            n_mels=int(conv1.shape[1]),
            n_audio_ctx=int(model["encoder/position_encodings/encodings"].shape[0]),
            n_state=int(conv1.shape[0]),
            n_audio_head=int(model["encoder/num_heads"]),
            n_audio_layer=layers("encoder"),
            n_vocab=int(model["decoder/embeddings/weight"].shape[0]),
            n_text_ctx=int(model["decoder/position_encodings/encodings"].shape[0]),
            n_text_head=int(model["decoder/num_heads"]),
            n_text_layer=layers("decoder"),
        )

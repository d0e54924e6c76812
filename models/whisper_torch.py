"""A compact torch Whisper rebuilt from CTranslate2 weights, split into the four ONNX stages.

Only needed to export stages (extra ``export``); serving runs the exported ONNX files.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from splitasr.models.ct2 import CT2Model
from splitasr.models.dims import WhisperDims


def _heads(x: Tensor, n_head: int) -> Tensor:
    """(batch, time, state) -> (batch, heads, time, state // heads)."""
    b, t, d = x.shape
    return x.view(b, t, n_head, d // n_head).transpose(1, 2)


def _attention(q: Tensor, k: Tensor, v: Tensor, n_head: int, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention of (batch, time, state) queries over keys/values already split
    into heads (batch, heads, tk, state // heads); returns (batch, time, state).

    ``mask`` is additive, broadcast to (batch, heads, tq, tk): 0 where a key is visible, -1e9 where not."""
    b, tq, d = q.shape
    scale = (d // n_head) ** -0.5
    scores = (_heads(q, n_head) @ k.transpose(-1, -2)) * scale
    w = torch.softmax(scores if mask is None else scores + mask, dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, tq, d)


class SelfAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)


class EncoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.attn = SelfAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(self, x: Tensor) -> Tensor:
        h = self.attn_ln(x)
        a = self.attn
        x = x + a.out(_attention(a.query(h), _heads(a.key(h), a.n_head), _heads(a.value(h), a.n_head), a.n_head))
        return x + self.mlp(self.mlp_ln(x))


class DecoderBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.attn = SelfAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_query = nn.Linear(n_state, n_state)
        self.cross_key = nn.Linear(n_state, n_state, bias=False)
        self.cross_value = nn.Linear(n_state, n_state)
        self.cross_out = nn.Linear(n_state, n_state)
        self.cross_ln = nn.LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(
        self,
        x: Tensor,
        past_k: Tensor,
        past_v: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        mask: Tensor,
        cross_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        h = self.attn_ln(x)
        a = self.attn
        k = torch.cat([past_k, a.key(h)], dim=1)
        v = torch.cat([past_v, a.value(h)], dim=1)
        x = x + a.out(_attention(a.query(h), _heads(k, self.n_head), _heads(v, self.n_head), self.n_head, mask))
        q = self.cross_query(self.cross_ln(x))
        x = x + self.cross_out(_attention(q, cross_k, cross_v, self.n_head, cross_mask))
        x = x + self.mlp(self.mlp_ln(x))
        return x, k, v


class Whisper(nn.Module):
    """Whisper with the encoder split at ``split_layer``; the stage wrappers below call its parts."""

    def __init__(self, dims: WhisperDims, split_layer: int | None = None):
        super().__init__()
        self.dims = dims
        self.split_layer = dims.n_audio_layer // 2 if split_layer is None else split_layer
        d = dims.n_state
        self.conv1 = nn.Conv1d(dims.n_mels, d, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1)
        self.register_buffer("enc_pos", torch.zeros(dims.n_audio_ctx, d))
        self.enc_blocks = nn.ModuleList(EncoderBlock(d, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = nn.LayerNorm(d)
        self.token_embedding = nn.Embedding(dims.n_vocab, d)
        self.register_buffer("dec_pos", torch.zeros(dims.n_text_ctx, d))
        self.dec_blocks = nn.ModuleList(DecoderBlock(d, dims.n_text_head) for _ in range(dims.n_text_layer))
        self.dec_ln = nn.LayerNorm(d)

    # -- stages -------------------------------------------------------------------------------
    def enc_a(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.enc_pos[: x.shape[1]]
        for block in self.enc_blocks[: self.split_layer]:
            x = block(x)
        return x

    def enc_b(self, x: Tensor) -> Tensor:
        for block in self.enc_blocks[self.split_layer :]:
            x = block(x)
        return self.ln_post(x)

    def cross_kv(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys/values (layers, batch, heads, ctx, state // heads), split into heads
        once here so that no decoder step copies them (on CPU that copy cost more than the attention)."""
        n = self.dims.n_text_head
        ks = [_heads(b.cross_key(audio), n) for b in self.dec_blocks]
        vs = [_heads(b.cross_value(audio), n) for b in self.dec_blocks]
        return torch.stack(ks), torch.stack(vs)

    def dec_step(
        self,
        tokens: Tensor,
        offset: Tensor,
        past_k: Tensor,
        past_v: Tensor,
        past_mask: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        cross_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decode ``tokens`` (batch, n) for sequences of different lengths in one batch.

        Row b's new tokens sit at text positions ``offset[b] + i``. ``cross_k``/``cross_v`` hold one
        (batch, heads, ctx, state // heads) tensor per layer (a stacked tensor or a sequence of them).
        ``past_mask`` (batch, past) and ``cross_mask`` (batch, ctx) are additive (0 visible, -1e9
        padding), so caches and audio states of different lengths can be padded into one batch.
        Returns last-position logits and the caches extended by the new tokens (``past`` + n entries
        per row).
        """
        n = tokens.shape[1]
        idx = torch.arange(n, device=tokens.device)
        x = self.token_embedding(tokens) + self.dec_pos[offset[:, None] + idx[None, :]]
        # new token i sees the visible past and new tokens <= i
        causal = (idx[None, :] > idx[:, None]).to(x.dtype) * -1e9
        b = tokens.shape[0]
        mask = torch.cat([past_mask[:, None, :].expand(b, n, -1), causal[None].expand(b, n, n)], dim=2)[:, None]
        cmask = cross_mask[:, None, None, :]
        new_k, new_v = [], []
        for i, block in enumerate(self.dec_blocks):
            x, k, v = block(x, past_k[i], past_v[i], cross_k[i], cross_v[i], mask, cmask)
            new_k.append(k)
            new_v.append(v)
        x = self.dec_ln(x[:, -1])
        logits = x @ self.token_embedding.weight.T
        return logits, torch.stack(new_k), torch.stack(new_v)

    # -- weights ------------------------------------------------------------------------------
    @classmethod
    def from_ct2(cls, model: CT2Model, split_layer: int | None = None) -> Whisper:
        dims = WhisperDims.from_ct2(model)
        net = cls(dims, split_layer)
        net.load_ct2(model)
        return net.eval()

    def load_ct2(self, m: CT2Model) -> None:
        d = self.dims.n_state
        state: dict[str, np.ndarray] = {}

        def put(name: str, array: np.ndarray) -> None:
            state[name] = np.asarray(array, dtype=np.float32)

        def linear(dst: str, src: str, bias: bool = True) -> None:
            put(f"{dst}.weight", m[f"{src}/weight"])
            if bias:
                put(f"{dst}.bias", m[f"{src}/bias"])

        def norm(dst: str, src: str) -> None:
            put(f"{dst}.weight", m[f"{src}/gamma"])
            put(f"{dst}.bias", m[f"{src}/beta"])

        def fused_qkv(dst: str, src: str) -> None:
            w, b = m[f"{src}/weight"], m[f"{src}/bias"]
            put(f"{dst}.query.weight", w[:d])
            put(f"{dst}.query.bias", b[:d])
            put(f"{dst}.key.weight", w[d : 2 * d])
            put(f"{dst}.value.weight", w[2 * d :])
            put(f"{dst}.value.bias", b[2 * d :])

        def ffn(dst: str, src: str) -> None:
            norm(f"{dst}.mlp_ln", f"{src}/layer_norm")
            linear(f"{dst}.mlp.0", f"{src}/linear_0")
            linear(f"{dst}.mlp.2", f"{src}/linear_1")

        linear("conv1", "encoder/conv1")
        linear("conv2", "encoder/conv2")
        put("enc_pos", m["encoder/position_encodings/encodings"])
        for i in range(self.dims.n_audio_layer):
            src, dst = f"encoder/layer_{i}", f"enc_blocks.{i}"
            norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            fused_qkv(f"{dst}.attn", f"{src}/self_attention/linear_0")
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            ffn(dst, f"{src}/ffn")
        norm("ln_post", "encoder/layer_norm")
        put("token_embedding.weight", m["decoder/embeddings/weight"])
        put("dec_pos", m["decoder/position_encodings/encodings"])
        for i in range(self.dims.n_text_layer):
            src, dst = f"decoder/layer_{i}", f"dec_blocks.{i}"
            norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            fused_qkv(f"{dst}.attn", f"{src}/self_attention/linear_0")
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            norm(f"{dst}.cross_ln", f"{src}/attention/layer_norm")
            linear(f"{dst}.cross_query", f"{src}/attention/linear_0")
            kv_w, kv_b = m[f"{src}/attention/linear_1/weight"], m[f"{src}/attention/linear_1/bias"]
            put(f"{dst}.cross_key.weight", kv_w[:d])
            put(f"{dst}.cross_value.weight", kv_w[d:])
            put(f"{dst}.cross_value.bias", kv_b[d:])
            linear(f"{dst}.cross_out", f"{src}/attention/linear_2")
            ffn(dst, f"{src}/ffn")
        norm("dec_ln", "decoder/layer_norm")
        tensors = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
        self.load_state_dict(tensors, strict=True)


class _Stage(nn.Module):
    """Wraps one stage method of :class:`Whisper` as ``forward`` for export."""

    def __init__(self, whisper: Whisper, stage: str):
        super().__init__()
        self.whisper = whisper
        self.stage = stage

    def forward(self, *args: Tensor):
        if self.stage == "dec_step":  # ONNX inputs: (tokens, …, past_mask, cross_mask, *cross_k, *cross_v)
            *head, cross_mask = args[:6]
            layers = self.whisper.dims.n_text_layer
            cross = args[6:]
            return self.whisper.dec_step(*head, cross[:layers], cross[layers:], cross_mask)
        return getattr(self.whisper, self.stage)(*args)


def stage_module(whisper: Whisper, stage: str) -> nn.Module:
    return _Stage(whisper, stage)

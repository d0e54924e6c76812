"""An OpenAI-compatible transcription API on the coordinator.

``POST /v1/audio/transcriptions`` (multipart: ``file``, ``model``, ``language``, ``prompt``,
``response_format`` = json | text | srt | vtt | verbose_json, ``timestamp_granularities[]`` =
segment, ``temperature``) and ``GET /v1/models``, so that the ``openai`` client and ``curl`` work
against a splitasr cluster. The API key is a **device token** (``splitasr token DEVICE``): the
upload runs as a session of that device, with the same checks and limits as its edge streams.

An upload is not recognised here: it is decoded (``shared/audio.py``: wav, flac, mp3, ogg, m4a,
webm, …) and streamed into the cluster as one edge session (``EdgeAgent``, Silero VAD endpointing),
routed like any stream (the pool of its ``model``, else of its ``language``), batch class by
default (``qos=interactive`` as an extra form field for live work), and rerouted if its shard is
lost. The FINALs, one per utterance with its start and end, become the response's segments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

from aiohttp import BodyPartReader, web
from prometheus_client import Counter as MetricCounter
from prometheus_client import Histogram

from splitasr.shared.audio import load_audio
from splitasr.shared.auth import bearer
from splitasr.shared.errors import AudioError, AuthError, ConfigError, SplitASRError
from splitasr.shared.subtitles import render

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit for this endpoint
MAX_AUDIO_S = 3 * 3600.0  # decoded length: 25 MB of silence or low-rate Opus decodes to far more
MAX_CONCURRENT = 16  # uploads decoded and streamed at once; more get 429
MAX_PER_DEVICE = 2  # ... of them from one device (they share its audio rate limit at the shards)
MAX_FIELD_BYTES = 4096  # a form field other than the file
MAX_PARTS = 32
FORM_DEADLINE_S = 120.0  # the whole upload must arrive within this
GONE_POLL_S = 1.0  # how often a running transcription checks that its client is still connected


class ClientGone(Exception):
    """The HTTP client closed its connection before its transcription was done."""


async def unless_gone(request: web.Request, work):
    """``await work``, cancelled (ClientGone) once the client's connection closes: aiohttp does not
    cancel handlers on a disconnect, and an abandoned upload would hold a session for minutes."""
    task = asyncio.ensure_future(work)
    try:
        while not (await asyncio.wait({task}, timeout=GONE_POLL_S))[0]:
            if request.transport is None or request.transport.is_closing():
                raise ClientGone()
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
ALIASES = ("whisper-1",)  # OpenAI's model name: the pool for the language, as with no model
BATCH_MAX_DEFER_S = 60.0  # an HTTP caller waits for its answer: defer at most this long
LANGUAGE_NAMES = {
    "en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian", "pt": "portuguese",
    "nl": "dutch", "sv": "swedish", "ja": "japanese", "zh": "chinese", "ru": "russian", "pl": "polish",
}  # fmt: skip


class ApiMetrics:
    def __init__(self, registry) -> None:
        self.requests = MetricCounter(
            "splitasr_api_transcriptions_total",
            "OpenAI-compatible transcription requests",
            ["format", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "splitasr_api_transcription_seconds",
            "Upload received to response, per request",
            buckets=(0.5, 1, 2, 5, 10, 20, 40, 80, 160),
            registry=registry,
        )


def openai_error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    """An error body as OpenAI sends it (its clients read ``error.message``)."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return web.json_response(body, status=status)


async def _read_form(request: web.Request) -> tuple[bytes, dict[str, list[str]]]:
    """The uploaded file and the other fields, within the size limits (streamed, never buffered whole)."""
    if not request.content_type.startswith("multipart/"):
        raise ConfigError("send multipart/form-data with a 'file' field")
    try:  # a trickling upload does not hold a slot forever
        return await asyncio.wait_for(_read_parts(await request.multipart()), FORM_DEADLINE_S)
    except asyncio.TimeoutError:
        raise ConfigError(f"the upload did not arrive within {FORM_DEADLINE_S:g} s") from None
    except ValueError as exc:  # malformed multipart framing
        raise ConfigError(f"malformed multipart body: {exc}") from None
    except ConnectionResetError:  # the client left mid-upload (aiohttp sets this on the payload)
        raise ClientGone() from None


async def _read_parts(reader) -> tuple[bytes, dict[str, list[str]]]:
    data, fields, parts = None, {}, 0
    while (part := await reader.next()) is not None:
        parts += 1
        if parts > MAX_PARTS:
            raise ConfigError(f"more than {MAX_PARTS} form fields")
        if not isinstance(part, BodyPartReader):
            raise ConfigError("nested multipart is not supported")
        if part.name == "file" and data is not None:
            raise ConfigError("one 'file' field per request")
        limit = MAX_UPLOAD_BYTES if part.name == "file" else MAX_FIELD_BYTES
        chunks, size = [], 0
        while chunk := await part.read_chunk(64 * 1024):
            size += len(chunk)
            if size > limit:
                what = "the file" if part.name == "file" else f"field {part.name!r}"
                raise web.HTTPRequestEntityTooLarge(
                    max_size=limit, actual_size=size, text=f"{what} exceeds {limit} bytes"
                )
            chunks.append(chunk)
        if part.name == "file":
            data = b"".join(chunks)
        elif part.name:
            fields.setdefault(part.name, []).append(b"".join(chunks).decode("utf-8", "replace"))
    if not data:
        raise ConfigError("the 'file' field is missing or empty")
    return data, fields


def _one(fields: dict[str, list[str]], name: str, default: str | None = None) -> str | None:
    values = fields.get(name)
    return values[-1].strip() if values else default


class TranscriptionAPI:
    """The handlers; ``coordinator`` gives auth, pools and its own URL (where the sessions go)."""

    def __init__(self, coordinator, registry) -> None:
        self.c = coordinator
        self.metrics = ApiMetrics(registry)
        self.running = 0
        self.per_device: Counter[str] = Counter()

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": p.model, "object": "model", "created": 0, "owned_by": "splitasr", "languages": list(p.languages)}
            for p in self.c.config.pools
        ]
        return web.json_response({"object": "list", "data": data})

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        fmt = "json"
        try:
            response = await self._transcribe(request)
            fmt = response.headers.get("X-Response-Format", fmt)
            status = "ok" if response.status == 200 else str(response.status)
            return response
        except ClientGone:
            status = "499"  # nginx's "client closed request": nobody reads this answer
            log.info("the client of a transcription went away; its session was stopped")
            return web.Response(status=499)
        except web.HTTPException as exc:
            status = str(exc.status)
            return openai_error(exc.status, exc.text or exc.reason, "too_large" if exc.status == 413 else "http")
        except AuthError as exc:
            status = "401"
            return openai_error(401, str(exc), "invalid_api_key")
        except (ConfigError, AudioError) as exc:
            status = "400"
            return openai_error(400, str(exc), "invalid_request")
        except SplitASRError as exc:  # no shard, a FINAL that never came, overload past the wait
            status = "503"
            log.warning("transcription failed: %s", exc)
            return openai_error(503, str(exc), "unavailable")
        finally:
            self.metrics.requests.labels(fmt, status).inc()
            self.metrics.seconds.observe(time.monotonic() - started)

    def _device(self, request: web.Request) -> tuple[str, str]:
        token = bearer(request.headers)
        device = token.split(".", 1)[0] if token else ""
        self.c.auth.check_device(device, token)  # AuthError: no or a bad device token
        return device, token

    async def _transcribe(self, request: web.Request) -> web.Response:
        device, token = self._device(request)
        if self.running >= MAX_CONCURRENT:
            return openai_error(429, f"more than {MAX_CONCURRENT} transcriptions at once; retry", "rate_limit")
        if self.per_device[device] >= MAX_PER_DEVICE:
            return openai_error(429, f"device {device!r} has {MAX_PER_DEVICE} transcriptions running", "rate_limit")
        self.running += 1
        self.per_device[device] += 1
        try:
            data, fields = await _read_form(request)
            fmt = _one(fields, "response_format", "json")
            if fmt not in RESPONSE_FORMATS:
                raise ConfigError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}")
            granularities = set(fields.get("timestamp_granularities[]", [])) | set(
                fields.get("timestamp_granularities", [])
            )
            if granularities - {"segment"}:
                raise ConfigError("timestamp_granularities: only 'segment' is supported (no word timestamps)")
            model, language, qos = self._route_fields(fields)
            audio = await unless_gone(request, asyncio.to_thread(load_audio, data, 16000, MAX_AUDIO_S))
            finals = await unless_gone(request, self._stream(audio, device, token, model, language, qos))
            body = self._body(fmt, finals, language, len(audio) / 16000)
            response = (
                web.json_response(body)
                if isinstance(body, dict)
                else web.Response(text=body, content_type="text/plain", charset="utf-8")
            )
            response.headers["X-Response-Format"] = fmt
            return response
        finally:
            self.running -= 1
            self.per_device[device] -= 1
            if not self.per_device[device]:
                del self.per_device[device]

    def _route_fields(self, fields: dict[str, list[str]]) -> tuple[str | None, str | None, str]:
        model = _one(fields, "model") or None
        pools = {p.model for p in self.c.config.pools}
        if model in ALIASES:
            model = None
        elif model is not None and model not in pools:
            raise ConfigError(f"model {model!r} is not served; models: {', '.join(sorted(pools) + list(ALIASES))}")
        language = (_one(fields, "language") or "").lower() or None
        served = {lang for p in self.c.config.pools for lang in p.languages}
        if language is not None and language not in served and "*" not in served:
            raise ConfigError(f"language {language!r} is not served; languages: {', '.join(sorted(served))}")
        qos = _one(fields, "qos", "batch")
        if qos not in ("batch", "interactive"):
            raise ConfigError(f"qos must be batch or interactive, got {qos!r}")
        return model, language, qos

    async def _stream(self, audio, device: str, token: str, model, language, qos: str) -> list:
        from splitasr.edge.agent import AgentOptions, EdgeAgent, edge_frames
        from splitasr.edge.audio_in import array_source
        from splitasr.shared.offload import in_thread

        url = getattr(self.c.backend, "coordinator_url", None)
        if not url:
            raise SplitASRError("the coordinator has no backend yet")
        options = AgentOptions(
            coordinator=url,
            device_id=device,
            token=token,
            language=language,
            model=model,
            qos=qos,
            max_defer_s=BATCH_MAX_DEFER_S,
        )
        # the edge pipeline (conditioning, VAD, log-mel) runs on a worker thread, off the control plane
        agent = EdgeAgent(options)  # its segmenter takes the pool's edge flags (endpoint silence)
        source = in_thread(lambda: edge_frames(array_source(audio), options, agent.segmenter))
        async with contextlib.aclosing(source) as frames:
            report = await agent.run_frames(frames)
        return sorted((f for f in report.finals if f.text.strip()), key=lambda f: f.utt)

    @staticmethod
    def _body(fmt: str, finals: list, language: str | None, duration_s: float) -> dict | str:
        text = " ".join(f.text.strip() for f in finals)
        language = language or next((f.language for f in finals if f.language), "en")
        timed = [cue for f in finals for cue in f.cues()]
        if fmt in ("text", "srt", "vtt"):
            return render("txt" if fmt == "text" else fmt, text, language, duration_s, timed)
        if fmt == "json":
            return {"text": text}
        segments = [
            {
                "id": i,
                "seek": 0,
                "start": round(seg.start_s, 3),
                "end": round(seg.end_s, 3),
                "text": seg.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 0.0,
                "no_speech_prob": 0.0,
            }
            for i, seg in enumerate(timed)
        ]
        return {
            "task": "transcribe",
            "language": LANGUAGE_NAMES.get(language, language),
            "duration": round(duration_s, 3),
            "text": text,
            "segments": segments,
        }


def add_routes(app: web.Application, coordinator, registry) -> TranscriptionAPI:
    api = TranscriptionAPI(coordinator, registry)
    app.router.add_post("/v1/audio/transcriptions", api.transcriptions)
    app.router.add_get("/v1/models", api.models)
    return api

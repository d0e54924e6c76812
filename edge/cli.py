"""``splitasr edge``: stream files, stdin or a microphone to a shard and print partials and finals."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from splitasr.edge.segmenter import SegmenterOptions
from splitasr.shared import protocol as p
from splitasr.shared.errors import EdgeError


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("edge", help="run an edge agent: audio in, transcripts out")
    a.add_argument("inputs", nargs="*", help="audio files, or - for a WAV stream on stdin")
    a.add_argument(
        "--shard",
        action="append",
        default=[],
        metavar="URL",
        help="ws://HOST:PORT of a stage-0 shard (repeat: failover order)",
    )
    a.add_argument("--coordinator", default=None, metavar="URL", help="get shards from this coordinator's /v1/route")
    a.add_argument("--discover", action="store_true", help="find the coordinator on the LAN by zeroconf")
    a.add_argument("--zone", default=None, help="this device's zone (the router prefers shards there)")
    a.add_argument("--region", default=None, help="this device's region")
    a.add_argument("--device-id", default="edge")
    a.add_argument(
        "--token",
        default="",
        help="device token from `splitasr token DEVICE_ID` (default $SPLITASR_DEVICE_TOKEN)",
    )
    a.add_argument(
        "--language",
        default=None,
        help="the speech's language (default: detected by the multilingual pool, then routed by it)",
    )
    a.add_argument("--model", default=None, help="ask the coordinator for this model's pool (default: by language)")
    a.add_argument(
        "--qos",
        default="interactive",
        choices=["interactive", "batch"],
        help="batch: may be deferred or shed first when the pool is overloaded",
    )
    a.add_argument("--dtype", default="int8", choices=["int8", "float16", "float32"])
    a.add_argument(
        "--split",
        default="features",
        choices=["features", "enc_a", "auto"],
        help="features: send log-mel (default); enc_a: run encoder A here and send its activations; "
        "auto: choose from measured edge compute, uplink and the shard's cost (docs/split.md)",
    )
    a.add_argument("--encoder-model", default="tiny.en", help="split enc_a/auto: encoder A's model (the shard's model)")
    a.add_argument("--encoder-threads", type=int, default=1, help="split enc_a/auto: threads for encoder A here")
    a.add_argument("--mic", action="store_true", help="stream the default microphone (extra 'mic')")
    a.add_argument("--raw-rate", type=int, default=None, help="stdin is raw s16le PCM at this rate")
    a.add_argument("--no-realtime", action="store_true", help="send files as fast as possible")
    a.add_argument("--json", action="store_true", help="print one JSON line per FINAL")
    a.add_argument(
        "--vad",
        default=SegmenterOptions.vad,
        choices=["silero", "energy"],
        help="speech detector: Silero VAD (default) or energy against a noise floor",
    )
    a.add_argument(
        "--endpoint-silence-s",
        type=float,
        default=SegmenterOptions.trailing_silence_s,
        help="silence that ends an utterance (seconds)",
    )
    a.add_argument(
        "--heartbeat-s",
        type=float,
        default=p.HEARTBEAT_S,
        help="ping the shard this often when nothing arrives; one silent for 1.5x this is hung and left "
        "(raise it on slow, high-latency links)",
    )
    a.set_defaults(func=cmd_edge)


def _sources(args: argparse.Namespace):
    from splitasr.edge import audio_in

    if args.mic:
        yield "mic", audio_in.mic_source()
        return
    if not args.inputs:
        raise SystemExit("splitasr edge: give FILE…, - (stdin) or --mic")
    for name in args.inputs:
        if name == "-":
            yield "stdin", audio_in.stdin_source(raw_rate=args.raw_rate)
        else:
            yield name, audio_in.file_source(name, realtime=not args.no_realtime)


def cmd_edge(args: argparse.Namespace) -> int:
    from splitasr.edge.agent import AgentOptions, EdgeAgent, FinalResult

    tty = sys.stdout.isatty()

    def on_partial(frame: p.Partial) -> None:
        if tty and not args.json:
            print(f"\r\033[K… {frame.text}", end="", flush=True)

    def on_final(result: FinalResult) -> None:
        if args.json:
            print(
                json.dumps(
                    {
                        "utt": result.utt,
                        "start_s": round(result.start_s, 2),
                        "end_s": round(result.end_s, 2),
                        "text": result.text,
                        "language": result.language,
                        "latency_s": round(result.latency_s, 3),
                        "audio_s": round(result.audio_s, 2),
                        "model_version": result.model_version,
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )
        else:
            prefix = "\r\033[K" if tty else ""
            span = f"{result.start_s:7.2f}-{result.end_s:7.2f} s"
            print(f"{prefix}[{span}, {result.latency_s * 1000:5.0f} ms] {result.text}", flush=True)

    coordinator = args.coordinator
    if args.discover and not coordinator:
        from splitasr.shared.discovery import discover

        coordinator = discover()
        if coordinator is None:
            raise EdgeError("no coordinator (_splitasr._tcp) found on the LAN within 5 s")
    if not coordinator and not args.shard:
        raise EdgeError("give --coordinator URL, --discover or at least one --shard URL")
    options = AgentOptions(
        shards=tuple(args.shard),
        coordinator=coordinator,
        zone=args.zone,
        region=args.region,
        device_id=args.device_id,
        token=args.token,
        language=args.language,
        model=args.model,
        qos=args.qos,
        dtype=args.dtype,
        split=args.split,
        encoder_model=args.encoder_model,
        encoder_threads=args.encoder_threads,
        segmenter=SegmenterOptions(vad=args.vad, trailing_silence_s=args.endpoint_silence_s),
        heartbeat_s=args.heartbeat_s,
    )
    for name, source in _sources(args):
        report = asyncio.run(EdgeAgent(options, on_partial, on_final).run(source))
        print(
            f"{name}: {len(report.finals) - report.empty_finals} utterances ({report.empty_finals} without speech), "
            f"{report.speech_s:.1f} s of speech, "
            f"{report.bytes_per_speech_s:.0f} bytes per speech second, {report.reconnects} reconnects"
            + (f", language {report.language}" if report.language else "")
            + (f", split {'/'.join(dict.fromkeys(report.splits))}" if args.split != "features" else ""),
            file=sys.stderr,
        )
    return 0

"""Offline subcommands: ``transcribe``, ``eval`` and ``export``."""

from __future__ import annotations

import argparse
import json
import sys
import time

from splitasr.models.sources import MODELS


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny.en", choices=sorted(MODELS), help="Whisper model (default tiny.en)")
    p.add_argument("--int8", action="store_true", help="use dynamically quantised int8 stages")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads per stage (0: all cores, max 4)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--split-layer", type=int, default=None, help="encoder layer where stage A ends (default: half)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files offline")
    p.add_argument("files", nargs="+", help="audio files (anything soundfile reads; any rate, stereo ok)")
    _model_args(p)
    p.add_argument("--language", default=None, help="language code (default: en, or detected by base)")
    p.add_argument(
        "--window",
        default="trimmed",
        choices=["trimmed", "full"],
        help="trimmed: encode audio + 2 s silence; full: 30 s windows like faster-whisper",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file, with timings")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("eval", help="word error rate over a JSONL manifest of file, text, language")
    p.add_argument("manifest")
    _model_args(p)
    p.add_argument("--detect", action="store_true", help="detect the language instead of using the manifest's")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export (and cache) the ONNX stages of a model")
    _model_args(p)
    p.set_defaults(func=cmd_export)


def _recognizer(args: argparse.Namespace):
    from splitasr.cloud.shard.recognizer import Recognizer

    return Recognizer.load(
        args.model,
        int8=args.int8,
        threads=args.threads,
        device=args.device,
        split_layer=args.split_layer,
        show_progress=sys.stderr.isatty(),
    )


def cmd_transcribe(args: argparse.Namespace) -> int:
    from splitasr.cloud.shard.recognizer import TranscribeOptions
    from splitasr.shared.audio import load_audio

    audios = [load_audio(f) for f in args.files]  # fail on a bad file before loading a model
    recognizer = _recognizer(args)
    options = TranscribeOptions(language=args.language, window=args.window)
    for path, audio in zip(args.files, audios, strict=True):
        started = time.perf_counter()
        result = recognizer.transcribe(audio, options)
        wall = time.perf_counter() - started
        if args.json:
            out = {
                "file": path,
                **result.to_dict(),
                "wall_s": round(wall, 3),
                "audio_s_per_wall_s": round(result.duration_s / wall, 2),
            }
            print(json.dumps(out, ensure_ascii=False))
        elif len(args.files) > 1:
            print(f"{path}: {result.text}")
        else:
            print(result.text)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from splitasr.cloud.shard.recognizer import TranscribeOptions
    from splitasr.shared.wer import WERReport, read_manifest

    entries = read_manifest(args.manifest)
    recognizer = _recognizer(args)
    usable = [e for e in entries if recognizer.multilingual or e.language == "en"]
    if len(usable) < len(entries):
        print(
            f"skipping {len(entries) - len(usable)} non-English entries: {args.model} is English-only "
            "(use --model base)",
            file=sys.stderr,
        )
    report = WERReport()
    rows = []
    for entry in usable:
        options = TranscribeOptions(language=None if args.detect else entry.language)
        result = recognizer.transcribe_file(entry.file, options)
        wer = report.add(entry.text, result.text, entry.language)
        rows.append(
            {
                "file": str(entry.file),
                "language": entry.language,
                "detected": result.language,
                "wer": round(wer, 4),
                "text": result.text,
            }
        )
    if args.json:
        print(
            json.dumps(
                {"model": args.model, "int8": args.int8, "wer": report.to_dict(), "utterances": rows},
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    for row in rows:
        print(f"{row['wer'] * 100:6.1f}%  [{row['language']}]  {row['file']}: {row['text']}")
    for lang, stats in report.to_dict().items():
        print(
            f"WER {lang}: {stats['wer'] * 100:.2f}% ({stats['errors']}/{stats['words']} words, "
            f"{stats['utterances']} utterances)"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from splitasr.models.stages import ensure_stages

    artifacts = ensure_stages(args.model, split_layer=args.split_layer, int8=args.int8, show_progress=True)
    print(artifacts.directory)
    return 0

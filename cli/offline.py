"""Offline subcommands: ``transcribe``, ``eval`` and ``export``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from splitasr.cloud.shard.guard import DEFAULT_WINDOW, PLANS
from splitasr.models.sources import MODELS
from splitasr.shared.subtitles import FORMATS, render


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny.en", choices=sorted(MODELS), help="Whisper model (default tiny.en)")
    p.add_argument("--int8", action="store_true", help="use dynamically quantised int8 stages")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads per stage (0: all cores, max 4)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--split-layer", type=int, default=None, help="encoder layer where stage A ends (default: half)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files offline")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, mp3, ogg, m4a, webm, ...; any rate, stereo ok)")
    _model_args(p)
    p.add_argument("--language", default=None, help="language code (default: en, or detected by base)")
    p.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        choices=sorted(PLANS),
        help="auto (default): audio + 2 s of silence, a degenerate hypothesis decoded again on the full "
        "30 s window; trimmed: never retry; full: 30 s windows like faster-whisper",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per file, with timings")
    p.add_argument(
        "--output-format",
        choices=[*FORMATS, "all"],
        default=None,
        help="write the transcript as txt, json, srt or vtt subtitles (all: each) instead of printing it",
    )
    p.add_argument(
        "--vad",
        action="store_true",
        help="cut the recording at pauses with Silero VAD (the edge's endpointing) and transcribe each "
        "utterance: segment times at the speech (subtitles), not Whisper's timestamps",
    )
    p.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help="with --output-format: write FILE_STEM.FORMAT files here (default: print to stdout)",
    )
    p.add_argument(
        "--batch",
        action="store_true",
        help="batch mode: files and directories, decoded together in one running batch, with a progress bar",
    )
    p.add_argument("--max-batch", type=int, default=16, help="batch mode: sequences decoded together")
    p.add_argument(
        "--coordinator",
        default=None,
        metavar="URL",
        help="send the files to this cluster as batch-class sessions instead of decoding here",
    )
    p.add_argument("--concurrency", type=int, default=4, help="with --coordinator: files in flight at once")
    p.add_argument("--device-id", default="batch", help="with --coordinator: the device the sessions come from")
    p.add_argument("--token", default="", help="with --coordinator: device token (default $SPLITASR_DEVICE_TOKEN)")
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


def write_outputs(args: argparse.Namespace, path: str | Path, text: str, language: str, duration_s: float, segments):
    """The ``--output-format`` files of one transcript (into ``--output-dir``, or stdout)."""
    formats = FORMATS if args.output_format == "all" else (args.output_format,)
    for fmt in formats:
        body = render(fmt, text, language, duration_s, segments)
        if args.output_dir is None:
            sys.stdout.write(body)
            continue
        target = Path(args.output_dir) / f"{Path(path).stem}.{fmt}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
        print(f"wrote {target}", file=sys.stderr)


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


AUDIO_SUFFIXES = {
    ".wav",
    ".flac",
    ".ogg",
    ".oga",
    ".mp3",
    ".opus",
    ".aiff",
    ".aif",
    ".m4a",
    ".mp4",
    ".aac",
    ".webm",
    ".mka",
}


def expand_inputs(paths: list[str]) -> list[Path]:
    """Files as given, directories expanded (recursively) to the audio files in them, sorted."""
    from splitasr.shared.errors import AudioError

    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        elif path.exists():
            out.append(path)
        else:
            raise AudioError(f"{raw}: no such file or directory")
    if not out:
        raise AudioError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {', '.join(paths)}")
    return out


def cmd_transcribe_batch(args: argparse.Namespace) -> int:
    import soundfile as sf
    from tqdm import tqdm

    from splitasr.cloud.shard.batch_transcriber import BatchTranscriber
    from splitasr.cloud.shard.recognizer import TranscribeOptions
    from splitasr.shared.audio import load_audio

    paths = expand_inputs(args.files)
    total = 0.0
    for path in paths:
        try:
            total += sf.info(str(path)).duration
        except (RuntimeError, sf.LibsndfileError):
            pass  # reported when the file is loaded
    recognizer = _recognizer(args)
    options = TranscribeOptions(language=args.language, window=args.window)
    transcriber = BatchTranscriber(recognizer, max_batch=args.max_batch)
    failed = 0
    started = time.perf_counter()
    with tqdm(total=round(total, 1), unit="audio-s", disable=None, file=sys.stderr, desc="transcribing") as bar:
        items = [(str(p), (lambda p=p: load_audio(p))) for p in paths]
        for result in transcriber.run(items, options, on_audio_done=lambda s: bar.update(round(s, 1))):
            if result.error is not None:
                failed += 1
                tqdm.write(f"{result.name}: error: {result.error}", file=sys.stderr)
            elif args.output_format:
                t = result.transcript
                write_outputs(args, result.name, t.text, t.language, t.duration_s, t.segments)
            elif args.json:
                tqdm.write(json.dumps({"file": result.name, **result.transcript.to_dict()}, ensure_ascii=False))
            else:
                tqdm.write(f"{result.name}: {result.transcript.text}")
    wall = time.perf_counter() - started
    stats = transcriber.stats
    print(
        f"{len(paths) - failed} files, {total:.1f} s of audio in {wall:.1f} s ({total / wall:.1f} audio-s/s); "
        f"{stats.steps} decoder steps, {stats.cache_hits} windows from cache, {failed} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


def cmd_transcribe_on_cluster(args: argparse.Namespace) -> int:
    import asyncio

    from splitasr.edge.cluster_jobs import transcribe_files

    paths = expand_inputs(args.files)

    def show(result) -> None:
        if result.error is not None:
            print(f"{result.path}: error: {result.error}", file=sys.stderr)
        elif args.output_format:
            end = max((f.end_s for f in result.finals), default=0.0)
            language = next((f.language for f in result.finals if f.language), args.language or "en")
            write_outputs(args, result.path, result.text, language, end, [c for f in result.finals for c in f.cues()])
        elif args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        else:
            print(f"{result.path}: {result.text}", flush=True)

    started = time.perf_counter()
    results = asyncio.run(
        transcribe_files(
            paths, args.coordinator, args.language, args.concurrency, args.device_id, args.token, on_result=show
        )
    )
    failed = sum(1 for r in results if r.error is not None)
    print(
        f"{len(paths) - failed} files through {args.coordinator} as batch work in "
        f"{time.perf_counter() - started:.1f} s, {sum(r.reconnects for r in results)} reconnects, {failed} failed",
        file=sys.stderr,
    )
    return 1 if failed else 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from splitasr.cloud.shard.recognizer import TranscribeOptions
    from splitasr.shared.audio import load_audio
    from splitasr.shared.errors import ConfigError

    if args.batch and args.vad:
        raise ConfigError("--vad transcribes one file at a time; leave out --batch")
    if args.output_format and args.output_dir:
        stems = [Path(p).stem for p in (expand_inputs(args.files) if args.batch or args.coordinator else args.files)]
        clashing = sorted({s for s in stems if stems.count(s) > 1})
        if clashing:
            raise ConfigError(f"--output-dir: several inputs would write {', '.join(clashing)}.*; use one run each")
    if args.coordinator:
        return cmd_transcribe_on_cluster(args)  # the cluster's edge sessions always cut at pauses (VAD)

    if args.batch:
        return cmd_transcribe_batch(args)

    audios = [load_audio(f) for f in args.files]  # fail on a bad file before loading a model
    recognizer = _recognizer(args)
    options = TranscribeOptions(language=args.language, window=args.window)
    for path, audio in zip(args.files, audios, strict=True):
        started = time.perf_counter()
        if args.vad:
            from splitasr.edge.segmenter import SegmenterOptions, speech_regions

            edge = SegmenterOptions()
            result = recognizer.transcribe_regions(audio, speech_regions(audio, edge), options, head_s=edge.pre_roll_s)
        else:
            result = recognizer.transcribe(audio, options)
        wall = time.perf_counter() - started
        if args.output_format:
            write_outputs(args, path, result.text, result.language, result.duration_s, result.segments)
        elif args.json:
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
        wer = report.add(entry.reference, result.text, entry.language)
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

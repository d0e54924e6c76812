"""A minimal per-utterance faster-whisper server, the third system of ``benchmarks/capacity.py``.

``POST /v1/transcribe?language=en`` with 16 kHz mono int16 PCM (one utterance, cut by the edge's
own endpointing) answers ``{"text", "wait_s", "compute_s"}``. faster-whisper runs as a user runs it
(greedy, its default fallbacks; ``models/reference.faster_whisper_default``), ``--workers``
utterances at a time with ``--threads`` each. Binds 127.0.0.1; writes ``--ready-file`` once loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from splitasr.models.reference import faster_whisper_default  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    transcribe = faster_whisper_default(args.model, args.compute_type, args.threads, args.workers)
    transcribe(np.zeros(16000, np.float32), "en")  # warm up
    pool = ThreadPoolExecutor(args.workers)

    async def handle(request: web.Request) -> web.Response:
        audio = np.frombuffer(await request.read(), np.int16).astype(np.float32) / 32768.0
        language = request.query.get("language", "en")
        submitted = time.perf_counter()

        def run():
            started = time.perf_counter()
            return transcribe(audio, language), started, time.perf_counter()

        text, started, done = await asyncio.get_running_loop().run_in_executor(pool, run)
        return web.json_response({"text": text, "wait_s": started - submitted, "compute_s": done - started})

    async def serve() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/transcribe", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        Path(args.ready_file).write_text(json.dumps({"pid": os.getpid(), "url": f"http://127.0.0.1:{port}"}))
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The decoder's continuous batching on the real tiny.en stages: same tokens as decoding alone,
finals never starved by partials, superseded partials dropped, bounded queue."""

from __future__ import annotations

import asyncio

import pytest

from splitasr.cloud.shard.decode_engine import DecodeEngine, EngineOptions
from splitasr.cloud.shard.guard import GuardOptions
from splitasr.cloud.shard.scheduler import PRIORITY_FINAL, PRIORITY_PARTIAL, Superseded
from splitasr.cloud.shard.supersession import FINAL_REV
from splitasr.shared.audio import load_audio
from splitasr.shared.errors import OverloadedError


@pytest.fixture(scope="module")
def windows(tiny_recognizer, manifest):
    """Audio states of trimmed windows of different lengths (5 clips, cut at 3-9 s)."""
    english = [e for e in manifest if e.language == "en"][:5]
    out = []
    for i, entry in enumerate(english):
        seconds = 3 + (i * 3) % 7
        audio = load_audio(entry.file)[: 16000 * seconds]
        states = tiny_recognizer.runtime.encode(tiny_recognizer.features(audio))
        out.append((states, len(audio) / 16000))
    return out


def _single(tiny_recognizer, states, seconds):
    return tiny_recognizer.decoder.decode(states, "en", seconds, EngineOptions().decoding)[0].tokens


def _engine(tiny_recognizer, **options):
    return DecodeEngine(tiny_recognizer.decoder, EngineOptions(**options))


def test_windows_of_different_lengths_decode_as_they_would_alone(tiny_recognizer, windows):
    singles = [_single(tiny_recognizer, s, sec) for s, sec in windows]
    assert len({s.shape[1] for s, _ in windows}) > 1, "the windows must differ in length"

    async def main():
        loop = asyncio.get_running_loop()
        stepped = asyncio.Event()

        def listener(engine):
            if engine._batch.steps >= 3:
                loop.call_soon_threadsafe(stepped.set)

        engine = DecodeEngine(tiny_recognizer.decoder, EngineOptions(max_batch=8), listener=listener)
        engine.start()
        try:
            # two join at once, the others while those are mid-sequence
            first = [asyncio.create_task(engine.decode(s, "en", sec)) for s, sec in windows[:2]]
            await asyncio.wait_for(stepped.wait(), 30)
            rest = [asyncio.create_task(engine.decode(s, "en", sec)) for s, sec in windows[2:]]
            results = await asyncio.gather(*first, *rest)
        finally:
            engine.close()
        return [r[0].tokens for r in results], engine.batch_sizes

    batched, sizes = asyncio.run(main())
    assert batched == singles
    assert max(sizes) > 1, f"sequences never shared a step: {sizes}"


def test_finals_are_never_starved_by_partials(tiny_recognizer, windows):
    """A batch full of partials and more partials waiting: a FINAL submitted last finishes first."""
    states, seconds = max(windows, key=lambda w: w[1])

    async def main():
        loop = asyncio.get_running_loop()
        full = asyncio.Event()

        def listener(engine):
            if len(engine.running()) == 2 and all(r.priority == PRIORITY_PARTIAL for r in engine.running()):
                loop.call_soon_threadsafe(full.set)

        engine = DecodeEngine(tiny_recognizer.decoder, EngineOptions(max_batch=2), listener=listener)
        engine.start()
        done: list[str] = []

        async def job(name, priority):
            try:
                await engine.decode(states, "en", seconds, priority, key=name, rev=1)
                done.append(name)
            except Superseded as exc:
                done.append(f"{name}:{exc}")

        try:
            partials = [asyncio.create_task(job(f"p{i}", PRIORITY_PARTIAL)) for i in range(6)]
            await asyncio.wait_for(full.wait(), 30)
            final = asyncio.create_task(job("final", PRIORITY_FINAL))
            await asyncio.gather(final, *partials)
        finally:
            engine.close()
        return done

    done = asyncio.run(main())
    waiting = [f"p{i}" for i in range(2, 6)]  # still queued when the FINAL arrived
    assert done.index("final") < min(done.index(p) for p in waiting), done
    assert any("preempted by a final" in d for d in done), done
    assert sum(1 for d in done if ":" not in d) == 6, "the other partials still complete"


def test_superseded_partials_are_dropped(tiny_recognizer, windows):
    states, seconds = windows[0]

    async def main():
        engine = _engine(tiny_recognizer, max_batch=4)
        outcomes: dict[str, str] = {}

        async def job(name, priority, rev):
            try:
                await engine.decode(states, "en", seconds, priority, key="s1/0", rev=rev)
                outcomes[name] = "done"
            except Superseded:
                outcomes[name] = "superseded"

        # queued before the engine runs: the older partial is overtaken by a newer one and the FINAL
        tasks = [
            asyncio.create_task(job("partial@10", PRIORITY_PARTIAL, 10)),
            asyncio.create_task(job("partial@20", PRIORITY_PARTIAL, 20)),
            asyncio.create_task(job("final", PRIORITY_FINAL, FINAL_REV)),
        ]
        await asyncio.sleep(0)  # all three enqueue
        assert engine.pending() == 3
        engine.start()
        await asyncio.gather(*tasks)
        other = await engine.decode(states, "en", seconds, PRIORITY_PARTIAL, key="s2/0", rev=5)
        engine.close()
        return outcomes, other

    outcomes, other = asyncio.run(main())
    assert outcomes == {"partial@10": "superseded", "partial@20": "superseded", "final": "done"}
    assert other[0], "partials of other utterances are unaffected"


def test_queue_is_bounded(tiny_recognizer, windows):
    states, seconds = windows[0]

    async def main():
        engine = _engine(tiny_recognizer, max_pending=3)  # not started: nothing leaves the queue
        tasks = [asyncio.create_task(engine.decode(states, "en", seconds)) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(OverloadedError) as info:
            await engine.decode(states, "en", seconds)
        assert info.value.retryable and info.value.code == "overloaded"
        engine.start()
        results = await asyncio.gather(*tasks)
        engine.close()
        return results, engine.max_pending_seen

    results, most = asyncio.run(main())
    assert len(results) == 3 and most == 3


def test_a_request_marked_stop_on_loop_ends_at_its_first_loop(tiny_recognizer, real_manifest):
    """Stage 0 marks a FINAL's trimmed window (the guard retries a loop on a longer window): the
    decoder shard stops it at the loop, as the offline path does."""
    rec, guard = tiny_recognizer, GuardOptions()
    digits = [e for e in real_manifest if e.file.name.startswith("en_audiomnist")]
    looping = []
    for entry in digits:
        audio = load_audio(entry.file)
        states = rec.runtime.encode(rec.features(audio))
        seconds = len(audio) / 16000
        early = rec.decoder.decode(states, "en", seconds, EngineOptions().decoding, loop_guard=guard)[0].tokens
        if len(early) < len(_single(rec, states, seconds)):
            looping.append((states, seconds, early))
    assert looping, "no real digit looped on its trimmed window"

    async def main():
        engine = _engine(rec)
        engine.start()
        try:
            stopped = [engine.decode(s, "en", sec, stop_on_loop=True) for s, sec, _ in looping]
            return [r[0].tokens for r in await asyncio.gather(*stopped)]
        finally:
            engine.close()

    assert asyncio.run(main()) == [early for _, _, early in looping]

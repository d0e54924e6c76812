"""Long-form streams built from the real-speech clips, the way a call or meeting sounds.

Each stream strings clips of one split together with pauses of 0.5–8 s, at its own sample rate
(8, 16, 22.05, 44.1 stereo, 48 kHz, 16 kHz stereo), some with background noise. The clips' levels
differ by 50 dB in the dev set, so each is brought to a talker level of -26 dBFS ± 4 dB (speech
RMS) before mixing, and noise sits about 20 dB below that. A pause shorter
than a second does not end a turn: clips separated by one form one utterance (a speaker going on),
so the reference utterance count is the number of such groups. Deterministic (seeded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from splitasr.shared.audio import load_audio, resample

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "samples" / "real"
PAUSES_S = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
FORMATS = ((16000, 1, 0.0), (8000, 1, 0.0), (44100, 2, 0.004), (48000, 1, 0.0), (22050, 1, 0.006), (16000, 2, 0.0))
TALKER_DBFS = -26.0
TURN_GAP_S = 1.0


@dataclass
class Utterance:
    text: str
    start_s: float  # first voiced sample, stream time
    end_s: float  # last voiced sample, stream time


@dataclass
class LongStream:
    path: Path
    sample_rate: int
    channels: int
    utterances: list[Utterance]  # after joining clips closer than TURN_GAP_S

    @property
    def reference(self) -> str:
        return " ".join(u.text for u in self.utterances if u.text)

    def expected_finals(self, max_utterance_s: float = 20.0) -> int:
        """FINALs an endpointer should give: one per turn, more where a turn exceeds the maximum length."""
        return sum(max(1, int(np.ceil((u.end_s - u.start_s) / max_utterance_s))) for u in self.utterances)


def _voiced(audio: np.ndarray, rate: int = 16000) -> list[tuple[int, int]]:
    """Runs (first, end sample) of 20 ms blocks within 35 dB of the clip's loudest block; runs less
    than a turn gap apart are one run (a speaker pausing inside a clip for longer starts a new one)."""
    block = rate // 50
    n = max(1, len(audio) // block)
    db = 10 * np.log10(np.mean(audio[: n * block].reshape(n, block) ** 2, axis=1) + 1e-12)
    voiced = np.flatnonzero(db > db.max() - 35)
    runs = [[int(voiced[0]), int(voiced[0]) + 1]]
    for b in voiced[1:]:
        if (b - runs[-1][1]) * block >= TURN_GAP_S * rate:
            runs.append([int(b), int(b) + 1])
        runs[-1][1] = int(b) + 1
    return [(lo * block, hi * block) for lo, hi in runs]


def _entries(split: str | None, min_s: float) -> list[dict]:
    rows = [json.loads(line) for line in (REAL / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [
        r for r in rows if r["language"] == "en" and (split is None or r["split"] == split) and r["duration_s"] >= min_s
    ]


def build_streams(
    out_dir: Path, count: int = 6, per_stream: int = 8, split: str | None = None, min_clip_s: float = 0.0, seed: int = 1
) -> list[LongStream]:
    """Write ``count`` long-form WAV streams to ``out_dir`` and return them with their references."""
    rng = np.random.default_rng(seed)
    entries = _entries(split, min_clip_s)
    order = rng.permutation(len(entries))
    out_dir.mkdir(parents=True, exist_ok=True)
    streams = []
    for k in range(count):
        rate, channels, noise = FORMATS[k % len(FORMATS)]
        picks = [entries[i] for i in np.roll(order, -k * per_stream)[:per_stream]]
        parts, clips, t = [np.zeros(8000, np.float32)], [], 0.5
        for n, row in enumerate(picks):
            audio = load_audio(REAL / row["file"])
            runs = _voiced(audio)
            rms = float(np.sqrt(np.mean(audio[runs[0][0] : runs[-1][1]] ** 2))) + 1e-9
            audio = audio * (10 ** ((TALKER_DBFS + rng.uniform(-4, 4)) / 20) / rms)
            text = row.get("label") or row["text"]
            clips += [
                Utterance(text if i == 0 else "", t + lo / 16000, t + hi / 16000) for i, (lo, hi) in enumerate(runs)
            ]
            pause = float(rng.choice(PAUSES_S)) if n + 1 < len(picks) else 2.0
            parts += [audio, np.zeros(int(pause * 16000), np.float32)]
            t += len(audio) / 16000 + pause
        signal = np.concatenate(parts)
        if noise:
            signal = signal + noise * rng.standard_normal(signal.size).astype(np.float32)
        signal = resample(signal, 16000, rate)
        if channels == 2:  # the far channel a little quieter, as from a real stereo pair
            signal = np.stack([signal, 0.8 * signal], axis=1)
        path = out_dir / f"longform_{k}_{rate}_{channels}ch.wav"
        sf.write(path, np.clip(signal, -1, 1), rate, subtype="PCM_16")
        streams.append(LongStream(path, rate, channels, _turns(clips)))
    return streams


def _turns(clips: list[Utterance]) -> list[Utterance]:
    turns = [clips[0]]
    for u in clips[1:]:
        last = turns[-1]
        if u.start_s - last.end_s < TURN_GAP_S:
            turns[-1] = Utterance(f"{last.text} {u.text}".strip(), last.start_s, u.end_s)
        else:
            turns.append(u)
    return turns

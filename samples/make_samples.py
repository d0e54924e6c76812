"""Regenerate the shipped sample clips with espeak-ng (synthetic speech; free to ship).

Run: python samples/make_samples.py   (needs the Debian package espeak-ng)
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from splitasr.shared.audio import load_audio, resample

HERE = Path(__file__).resolve().parent

# (file, espeak voice, words per minute, language, text)
CLIPS = [
    (
        "en_weather.flac",
        "en-us",
        150,
        "en",
        "The weather will be sunny this afternoon, with a light breeze coming from the west.",
    ),
    (
        "en_meeting.flac",
        "en-gb",
        150,
        "en",
        "Please remember that the team meeting has moved to the small room on the second floor.",
    ),
    (
        "en_kitchen.flac",
        "en-us+f3",
        145,
        "en",
        "She opened the kitchen window and listened to the birds singing in the garden.",
    ),
    (
        "en_train_22k_stereo.flac",
        "en-gb-x-rp",
        155,
        "en",
        "The next train to the city centre leaves from platform four in a few minutes.",
    ),
    (
        "en_library.flac",
        "en-us+m3",
        150,
        "en",
        "Our library is open every day except Sunday, and children can borrow books for free.",
    ),
    (
        "en_story.flac",
        "en-us",
        140,
        "en",
        "Once upon a time there was a little village at the edge of a great forest. "
        "Every morning the baker opened his shop and the smell of fresh bread filled the streets. "
        "The children ran to school, and the farmers drove their carts to the market. "
        "One winter the snow fell for many days and the roads were closed. "
        "The villagers shared their food and their firewood, and nobody went hungry. "
        "When spring came, they held a festival to thank each other for their kindness.",
    ),
    ("de_bahnhof.flac", "de", 140, "de", "Der Zug nach Berlin fährt heute pünktlich vom ersten Gleis ab."),
    ("es_mercado.flac", "es", 140, "es", "Mañana vamos al mercado para comprar frutas y verduras frescas."),
    ("fr_musee.flac", "fr", 140, "fr", "Le musée est ouvert tous les jours sauf le lundi matin."),
]
LEAD_S, TAIL_S = 0.3, 0.5


def synthesize(voice: str, wpm: int, text: str) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
        audio = load_audio(wav, 16000)
    audio = audio / max(1e-6, float(np.abs(audio).max())) * 0.7
    return np.concatenate([np.zeros(int(LEAD_S * 16000)), audio, np.zeros(int(TAIL_S * 16000))]).astype(np.float32)


def main() -> None:
    lines = []
    for name, voice, wpm, language, text in CLIPS:
        audio = synthesize(voice, wpm, text)
        if "stereo" in name:  # one clip at 22.05 kHz stereo, to exercise resampling and downmix
            stereo = resample(audio, 16000, 22050)
            sf.write(HERE / name, np.stack([stereo, 0.8 * stereo], axis=1), 22050, subtype="PCM_16")
        else:
            sf.write(HERE / name, audio, 16000, subtype="PCM_16")
        lines.append(json.dumps({"file": name, "text": text, "language": language}, ensure_ascii=False))
        print(f"{name}: {len(audio) / 16000:.1f} s")
    (HERE / "manifest.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

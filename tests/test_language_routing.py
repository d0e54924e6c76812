"""Language routing on a real cluster: sessions without a language hint start on the multilingual
pool (Whisper base), which detects the language on their first utterance; an English session moves
to the English pool (tiny.en) between utterances, losing and repeating nothing; the others stay on
base and are transcribed in their own language. Real speech from samples/real, in real time.
"""

from __future__ import annotations

import pytest

from splitasr.shared.longform import build_streams
from splitasr.shared.wer import WERReport
from tests.cluster import FIXED_ONE, CoordinatorProcess, stream_base

pytestmark = pytest.mark.integration

FIXED = FIXED_ONE
CONFIG = {
    "decision_period_s": 0.5,
    "pools": [
        {"model": "tiny.en", "languages": ["en"], "zones": ["a"], "autoscaler": FIXED},
        {"model": "base", "languages": ["*"], "zones": ["a"], "autoscaler": FIXED},
    ],
}
OTHERS = [  # one FLEURS / NST clip per language (tune split)
    "de/de_fleurs_test_004.flac",
    "es/es_fleurs_test_003.flac",
    "fr/fr_fleurs_test_005.flac",
    "pt/pt_fleurs_test_002.flac",
    "sv/sv_nst_u0016003.flac",
]


def test_sessions_without_a_hint_are_routed_by_their_detected_language(
    tmp_path, tiny_artifacts, base_artifacts, edges, real_manifest
):
    entries = {str(e.file.relative_to(e.file.parents[1])): e for e in real_manifest}
    # English as a call sounds: real clips with pauses of 0.5-8 s (shared/longform.py)
    english = build_streams(tmp_path / "en", count=1, per_stream=5, min_clip_s=2.0)[0]
    with CoordinatorProcess(tmp_path, CONFIG) as cluster:
        pool_of = {stream_base(s["url"]): model for model in ("tiny.en", "base") for s in cluster.stage0(model)}
        futures = {"en": edges.start(english.path, cluster.url, device_id="en-edge", language=None)}
        futures["en-hinted"] = edges.start(english.path, cluster.url, device_id="en-hinted")  # straight to tiny.en
        for clip in OTHERS:
            futures[clip] = edges.start(entries[clip].file, cluster.url, device_id=f"edge-{clip[:2]}", language=None)
        reports = {k: f.result(timeout=240) for k, f in futures.items()}

    wer = WERReport()
    en = reports["en"]
    assert sorted(f.utt for f in en.finals) == list(range(en.utterances)) and en.duplicate_finals == 0
    assert en.utterances >= 2 and en.language == "en" and en.language_moves == 1 and en.reconnects == 1
    assert [pool_of[stream_base(u)] for u in en.shards] == ["base", "tiny.en"]
    models = [f.model_version.split("@")[0] for f in sorted(en.finals, key=lambda f: f.utt)]
    assert models[0] == "base" and models[-1] == "tiny.en", models  # later utterances on tiny.en
    wer.add(english.reference, " ".join(f.text for f in sorted(en.finals, key=lambda f: f.utt)), "en")
    for clip in OTHERS:
        report, entry = reports[clip], entries[clip]
        assert report.language == entry.language and report.language_moves == 0 and report.reconnects == 0
        assert {pool_of[stream_base(u)] for u in report.shards} == {"base"}
        assert report.finals and all(f.language == entry.language for f in report.finals if f.text.strip())
        text = " ".join(f.text for f in sorted(report.finals, key=lambda f: f.utt))
        wer.add(entry.reference, text, entry.language)
    table = wer.to_dict()
    per_language = {lang: f"{t['wer']:.1%} of {t['words']} words" for lang, t in table.items()}
    print("\nlanguage routing, WER per language:", per_language)
    print(f"English: FINAL models by utterance {models}")
    # the same stream with --language en: straight to tiny.en. After the move, the routed session's
    # utterances are the hinted session's, answered by the same model: the same text
    hinted = {f.utt: f for f in reports["en-hinted"].finals}
    assert reports["en-hinted"].utterances == en.utterances
    assert all(hinted[f.utt].text == f.text for f in en.finals if f.model_version.startswith("tiny.en"))
    alone = WERReport()
    alone.add(english.reference, " ".join(f.text for f in sorted(hinted.values(), key=lambda f: f.utt)), "en")
    print(f"English WER routed {table['en']['wer']:.1%}, with the language given {alone.to_dict()['en']['wer']:.1%}")

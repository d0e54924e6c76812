"""The ONNX stages built without torch (models/graphs.py) against the torch reference (the module and
its ONNX export), and the artefact cache, on the real tiny.en weights."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from splitasr.cloud.shard.decoding import greedy_decode
from splitasr.models.stages import ensure_stages
from splitasr.shared.audio import load_audio

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_whisper(tiny_artifacts):
    from splitasr.models.ct2 import read_ct2
    from splitasr.models.sources import locate
    from splitasr.models.whisper_torch import Whisper

    return Whisper.from_ct2(read_ct2(locate("tiny.en").model_bin), tiny_artifacts.manifest["split_layer"])


def _torch_step(whisper):
    def step(*inputs):
        with torch.no_grad():
            out = whisper.dec_step(*(torch.from_numpy(np.asarray(a)) for a in inputs))
        return tuple(t.numpy() for t in out)

    return step


def test_torch_and_onnx_agree(tiny_recognizer, torch_whisper, manifest):
    entry = next(e for e in manifest if e.language == "en")
    mel = tiny_recognizer.features(load_audio(entry.file))
    with torch.no_grad():
        hidden_t = torch_whisper.enc_a(torch.from_numpy(mel))
        audio_t = torch_whisper.enc_b(hidden_t)
        ck_t, cv_t = torch_whisper.cross_kv(audio_t)
    runtime = tiny_recognizer.runtime
    (hidden_o,) = runtime.run("enc_a", mel)
    audio_o = runtime.encode(mel)
    ck_o, cv_o = runtime.cross_kv(audio_o)
    diff_a = np.abs(hidden_o - hidden_t.numpy()).max()
    diff_b = np.abs(audio_o - audio_t.numpy()).max()
    print(f"max abs diff enc_a {diff_a:.2e}, encoder output {diff_b:.2e}")
    assert diff_a < 1e-3 and diff_b < 1e-3
    prompt = tiny_recognizer.tokenizer.prompt("en")
    rules = tiny_recognizer.rules
    onnx_tokens = greedy_decode(runtime.dec_step, ck_o, cv_o, [prompt], [60], rules)
    torch_tokens = greedy_decode(_torch_step(torch_whisper), ck_t.numpy(), cv_t.numpy(), [prompt], [60], rules)
    assert onnx_tokens == torch_tokens
    assert len(onnx_tokens[0]) > 3


def test_graphs_built_without_torch_decode_like_the_torch_export(tiny_recognizer, real_manifest, tmp_path):
    """The torch export (``models/export.py``) stays the reference: on real English clips both sets of
    fp32 stages give identical tokens; the largest difference of any stage output is reported."""
    import shutil

    from splitasr.cloud.shard.recognizer import Recognizer, TranscribeOptions
    from splitasr.cloud.shard.runtime import RuntimeOptions
    from splitasr.models.ct2 import read_ct2
    from splitasr.models.export import export_stages
    from splitasr.models.sources import locate
    from splitasr.models.stages import StageArtifacts

    built = tiny_recognizer.artifacts
    reference = tmp_path / "torch"
    shutil.copytree(built.directory, reference, ignore=shutil.ignore_patterns("*.onnx"))
    export_stages(read_ct2(locate("tiny.en").model_bin), reference, built.manifest["split_layer"])
    torch_rec = Recognizer(StageArtifacts(reference, built.manifest), RuntimeOptions(threads=2))
    english = [e for e in real_manifest if e.language == "en"][::8]  # 13 clips, digits to passages
    diff = 0.0
    for entry in english:
        audio = load_audio(entry.file)
        options = TranscribeOptions(language="en")
        a, b = tiny_recognizer.transcribe(audio, options), torch_rec.transcribe(audio, options)
        assert a.tokens == b.tokens, entry.file.name
        mel = tiny_recognizer.features(audio[: 16000 * 20])
        enc = [r.runtime.encode(mel) for r in (tiny_recognizer, torch_rec)]
        diff = max(diff, float(np.abs(enc[0] - enc[1]).max()))
    print(f"{len(english)} real clips: identical tokens; encoder output max abs diff {diff:.2e}")
    assert diff < 1e-3


def test_stage_inputs_match_the_contract(tiny_recognizer):
    """dec_step takes each layer's cross keys/values as inputs of their own (no per-step split)."""
    from splitasr.models.export import STAGES, input_names

    runtime = tiny_recognizer.runtime
    layers = runtime.artifacts.decoder_layers
    for stage in STAGES:
        assert [i.name for i in runtime.sessions[stage].get_inputs()] == input_names(stage, layers)
    assert input_names("dec_step", layers)[-1] == f"cross_v_{layers - 1}"


def test_batched_decoding_equals_single(tiny_recognizer, manifest):
    """Sequences leaving a batch early must not change the others' tokens."""
    runtime, rules = tiny_recognizer.runtime, tiny_recognizer.rules
    english = [e for e in manifest if e.language == "en"][:3]
    singles, crosses = [], []
    prompt = tiny_recognizer.tokenizer.prompt("en")
    for entry in english:
        audio = load_audio(entry.file)[: 16000 * 6]
        ck, cv = runtime.cross_kv(runtime.encode(tiny_recognizer.features(audio, "full")))
        crosses.append((ck, cv))
        singles += greedy_decode(runtime.dec_step, ck, cv, [prompt], [80], rules)
    ck = np.concatenate([c[0] for c in crosses], axis=1)
    cv = np.concatenate([c[1] for c in crosses], axis=1)
    caps = [80, 5, 80]
    batched = greedy_decode(runtime.dec_step, ck, cv, [prompt] * 3, caps, rules)
    assert batched[0] == singles[0] and batched[2] == singles[2]
    assert batched[1] == singles[1][:5]


def test_cache_manifest_and_no_second_export(tiny_artifacts, monkeypatch):
    manifest = json.loads((tiny_artifacts.directory / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"enc_a", "enc_b", "cross_kv", "dec_step"}
    assert manifest["weights_sha256"].startswith("1a5afae0")
    assert manifest["feature_spec"]["n_mels"] == 80 and manifest["opset"] == 18
    assert manifest["exporter"] == "onnx-graphs" and "onnxruntime" in manifest["versions"]

    def no_export(*args, **kwargs):
        raise AssertionError("a cached model must not be exported again")

    monkeypatch.setattr("splitasr.models.stages._export", no_export)
    started = time.perf_counter()
    again = ensure_stages("tiny.en", show_progress=False)
    print(f"second ensure_stages: {(time.perf_counter() - started) * 1000:.1f} ms")
    assert again.directory == tiny_artifacts.directory

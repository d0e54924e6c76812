"""Recogniser shards: run ONNX stages of a split Whisper model."""

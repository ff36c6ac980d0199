"""Freeze a trained backbone into a deterministic ONNX feature extractor."""

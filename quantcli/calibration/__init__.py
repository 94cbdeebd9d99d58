"""Calibration: sample readers, observers and the onnxruntime runs that feed them."""

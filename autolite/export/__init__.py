"""Exports: HF directories (``hf.py``); ONNX and MLX are added as their own modules."""

"""Inference engines: PyTorch and ONNX Runtime behind one :class:`Predictor` interface.

Importing this package does not import torch or onnxruntime; they load when a predictor is made.
"""

from __future__ import annotations

from mfaf_cli.engine.base import ENGINES, Predictor, check_batch
from mfaf_cli.engine.factory import create_predictor

__all__ = ["ENGINES", "Predictor", "check_batch", "create_predictor"]

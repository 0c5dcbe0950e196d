"""mfaf: multimodal fusion networks for land-use mapping from optical+SAR or HSI+LiDAR scenes.

Importing the package is cheap (no torch). The public API is imported lazily:

    from mfaf_cli import predict        # streamed, blended, georeferenced prediction
    from mfaf_cli import ReadSpec, InferenceSpec, WriteSpec  # what to read, how, what to write
    from mfaf_cli import create_model   # registry of fusion networks
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "predict": ("mfaf_cli.pipeline.predict", "predict"),
    "coregister": ("mfaf_cli.pipeline.predict", "coregister"),
    "predict_batch": ("mfaf_cli.pipeline.batch", "predict_batch"),
    "ReadSpec": ("mfaf_cli.pipeline.read_spec", "ReadSpec"),
    "InferenceSpec": ("mfaf_cli.pipeline.spec", "InferenceSpec"),
    "WriteSpec": ("mfaf_cli.pipeline.write_spec", "WriteSpec"),
    "create_model": ("mfaf_cli.registry", "create_model"),
    "list_models": ("mfaf_cli.registry", "list_models"),
    "load_model": ("mfaf_cli.models.resolve", "load_model"),
    "ModelMeta": ("mfaf_cli.metadata", "ModelMeta"),
    "MfafError": ("mfaf_cli.errors", "MfafError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'mfaf_cli' has no attribute {name!r}")

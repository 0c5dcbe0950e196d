"""Fusion networks (MFAFNet, CoMiX, U-Net baselines), their registry and losses.

Only the registry is imported here, and it does not import torch: network modules load when
a model is built.
"""

from __future__ import annotations

from mfaf_cli.registry import (
    ModelEntry,
    count_parameters,
    create_model,
    default_meta,
    get_entry,
    list_models,
    model_divisor,
)

__all__ = [
    "ModelEntry",
    "count_parameters",
    "create_model",
    "default_meta",
    "get_entry",
    "list_models",
    "model_divisor",
]

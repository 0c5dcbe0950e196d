"""The small closed vocabularies of the public API, as ``Literal`` types (for type checkers)
and as tuples (for validation and CLI choices), defined once."""

from __future__ import annotations

from typing import Literal, get_args

Modality = Literal["optical", "sar", "hsi", "lidar"]
Blend = Literal["gaussian", "cosine", "constant"]
Engine = Literal["auto", "torch", "onnx"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
#: Cross-modal alignment (MMD) losses a network can support (``--mmd``; ``none`` turns it off).
AlignmentKind = Literal["rbf", "paired", "linear", "class"]

MODALITIES: tuple[str, ...] = get_args(Modality)
BLENDS: tuple[str, ...] = get_args(Blend)
ENGINES: tuple[str, ...] = get_args(Engine)
PRECISIONS: tuple[str, ...] = get_args(Precision)
ALIGNMENT_KINDS: tuple[str, ...] = get_args(AlignmentKind)

#: What ``--confidence`` writes: the top class probability, or the normalised entropy.
ConfidenceKind = Literal["top", "entropy"]
CONFIDENCE_KINDS: tuple[ConfidenceKind, ...] = ("top", "entropy")

#: How ``--probabilities`` are stored: uint8 0..254 (255 nodata) or float32 0..1 (NaN nodata).
ProbabilityDtype = Literal["uint8", "float32"]
PROBABILITY_DTYPES: tuple[str, ...] = get_args(ProbabilityDtype)

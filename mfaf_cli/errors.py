"""Exception tree for mfaf.

Library code raises these; the CLI turns them into a one-line message and an exit code
(1 = data/runtime error, 2 = usage error). Messages say what is wrong *and* how to fix it.
No click import here: the library must be usable without the CLI.
"""

from __future__ import annotations


class MfafError(Exception):
    """Base class of every error mfaf raises on purpose."""

    exit_code: int = 1


class UsageError(MfafError):
    """A flag or argument value is invalid (tile, overlap, band list, unknown name...)."""

    exit_code = 2


class OutputExistsError(UsageError):
    """The output exists and ``--overwrite`` was not given."""


class OutputPathError(UsageError):
    """The output folder is missing or not writable."""


class InputError(MfafError):
    """An input file is missing, unreadable, not a raster, or has unusable content."""


class CRSError(InputError):
    """A raster has no CRS or one that cannot be used."""


class NoOverlapError(InputError):
    """Inputs do not overlap on the target grid."""


class BandMismatchError(InputError):
    """A raster's band count or band names do not match what the model takes."""


class ModalityError(UsageError):
    """A modality was given that the model does not take, or a required one is missing."""


class ModelError(MfafError):
    """Unknown model name or an invalid model configuration."""

    exit_code = 2


class OutputWriteError(MfafError):
    """An output could not be written (device full, I/O error); nothing is left behind."""


class WeightsError(MfafError):
    """A checkpoint is missing, truncated, tampered with, or for another model."""


class EngineError(MfafError):
    """The inference engine (PyTorch / ONNX Runtime) failed or is unavailable."""


class DatasetError(InputError):
    """A dataset root is missing, in the wrong layout, or a split is empty."""


class LabelError(InputError):
    """A label raster holds values outside the model's class table."""


class VectorOutputError(MfafError):
    """The rasters of a predict run were written but its --vector step failed (exit 1)."""

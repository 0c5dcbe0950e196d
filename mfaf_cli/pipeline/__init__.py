"""End-to-end pipelines built on coreg, engine, stitch and io: predict and coregister."""

from __future__ import annotations

from mfaf_cli.pipeline.predict import CoregisterResult, PredictResult, coregister, predict

__all__ = ["CoregisterResult", "PredictResult", "coregister", "predict"]

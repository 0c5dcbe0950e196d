"""Scores of a map against the truth, pure numpy: metrics from a confusion matrix, bootstrap
intervals, calibration counts. Below both the pipeline (its confusion sink) and training."""

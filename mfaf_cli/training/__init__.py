"""Training loop, metrics and evaluation.

:mod:`~mfaf_cli.scores.metrics` is pure numpy; the trainer and evaluator import torch, so
they are imported explicitly, never from here.
"""

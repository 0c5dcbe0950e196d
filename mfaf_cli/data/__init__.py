"""Training datasets (OMBRIA, Sen1Floods11, WHU-OPT-SAR, user scene lists).

Import :mod:`mfaf_cli.data.datasets` explicitly; it imports torch, this package does not.
"""

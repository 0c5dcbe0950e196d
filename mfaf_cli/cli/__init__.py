"""Thin click CLI over the mfaf Python API. No torch import at module level anywhere here."""

"""XML escaping for the VRTs mfaf writes, imported only when one is written.

``xml.sax.saxutils`` imports ``urllib.request`` and so ``ssl``: ~3 MB resident in every run
(measured), while only runs that stack or mosaic inputs write XML.
"""

from __future__ import annotations


def escape(text: str) -> str:
    """``xml.sax.saxutils.escape``: ``&``, ``<`` and ``>`` as entities."""
    from xml.sax.saxutils import escape as sax_escape

    return sax_escape(text)


def quoteattr(text: str) -> str:
    """``xml.sax.saxutils.quoteattr``: an attribute value, escaped and quoted."""
    from xml.sax.saxutils import quoteattr as sax_quoteattr

    return sax_quoteattr(text)

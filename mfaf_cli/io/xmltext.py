"""XML escaping for the sidecars and VRTs mfaf writes, without ``xml.sax.saxutils``.

``xml.sax.saxutils`` imports ``urllib.request`` and so ``ssl``: ~3 MB resident in every run
(measured), and every predict writes a category sidecar at its end, while the ORT arena is
still held; these two functions give the same text (tested against saxutils).
"""

from __future__ import annotations


def escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as entities (``&`` first, so no entity is escaped twice)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    """An attribute value, escaped and quoted: double quotes unless the value holds one and
    no single quote (then single quotes); with both, ``"`` as ``&quot;``. Tab, newline and
    carriage return as character references (an attribute's whitespace is normalised)."""
    data = escape(text).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' not in data:
        return f'"{data}"'
    if "'" not in data:
        return f"'{data}'"
    return '"{}"'.format(data.replace('"', "&quot;"))

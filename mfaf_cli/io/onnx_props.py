"""An ONNX model's ``metadata_props`` read straight from the file's protobuf wire format.

Why not ``onnx.load``: that imports the onnx package (0.5 s, ~15 MB resident for the rest of
the run) and parses the whole graph with its weights (17 MB for the shipped MFAFNet-S) to read
a few hundred bytes. The props are a top-level field of ``ModelProto``; every other field is
skipped by its length, so this reads kilobytes whatever the model's size.
"""

from __future__ import annotations

from typing import BinaryIO

#: ModelProto field numbers (onnx.proto): metadata_props; StringStringEntryProto key / value
METADATA_PROPS, KEY, VALUE = 14, 1, 2
VARINT, I64, LEN, I32 = 0, 1, 2, 5


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(read: BinaryIO) -> int | None:
    """The next base-128 varint, None at the end of the stream (before its first byte)."""
    value = shift = 0
    while True:
        b = read.read(1)
        if not b:
            if shift:
                raise ProtoError("truncated varint")
            return None
        value |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ProtoError("varint longer than 10 bytes")


def iter_fields(stream: BinaryIO, end: int, keep: frozenset[int]) -> list[tuple[int, bytes]]:
    """The length-delimited fields numbered in ``keep`` of the message that runs from the
    stream's position to ``end``, in order; every other field is skipped unread."""
    out: list[tuple[int, bytes]] = []
    while stream.tell() < end:
        tag = _varint(stream)
        if tag is None:
            break
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire not in (VARINT, I64, LEN, I32):
            raise ProtoError(f"unsupported wire type {wire}")
        value = _varint(stream) if wire in (VARINT, LEN) else {I64: 8, I32: 4}[wire]
        if value is None:
            raise ProtoError("a field ends after its tag")
        if wire == VARINT:
            continue
        length = value
        start = stream.tell()
        if start + length > end:
            raise ProtoError("field runs past the end of its message")
        if wire == LEN and number in keep:
            out.append((number, stream.read(length)))
        else:
            stream.seek(start + length)
    if stream.tell() != end:
        raise ProtoError("message ends inside a field")
    return out


def read_metadata_props(stream: BinaryIO, size: int) -> dict[str, str]:
    """``metadata_props`` of the ModelProto in ``stream`` (``size`` bytes from its start)."""
    import io

    props: dict[str, str] = {}
    for _, entry in iter_fields(stream, size, frozenset({METADATA_PROPS})):
        parts = dict(iter_fields(io.BytesIO(entry), len(entry), frozenset({KEY, VALUE})))
        try:
            key, value = parts.get(KEY, b"").decode(), parts.get(VALUE, b"").decode()
        except UnicodeDecodeError:
            raise ProtoError("a metadata key or value is not UTF-8") from None
        props[key] = value
    return props

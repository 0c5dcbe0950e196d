"""Reading an ONNX model's metadata_props from the protobuf wire format (mfaf_cli/io/onnx_props.py)
against the onnx package's own parser, and bad files as one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from mfaf_cli.errors import WeightsError
from mfaf_cli.io.onnx_props import ProtoError, iter_fields, read_metadata_props
from mfaf_cli.io.weights import read_onnx_meta


def small_model(props: dict[str, str], weights: int = 300_000) -> bytes:
    """A valid ModelProto: a graph with a large initializer (skipped by length), an opset,
    a producer (varint and string fields around it) and ``props``."""
    w = numpy_helper.from_array(np.arange(weights, dtype=np.float32), "w")
    node = helper.make_node("Identity", ["w"], ["y"])
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [weights])
    graph = helper.make_graph([node], "g", [], [out], initializer=[w])
    model = helper.make_model(
        graph, producer_name="test", opset_imports=[helper.make_opsetid("", 17)]
    )
    helper.set_model_props(model, props)
    return model.SerializeToString()


def props_of(data: bytes) -> dict[str, str]:
    return read_metadata_props(io.BytesIO(data), len(data))


def test_props_match_the_onnx_parser() -> None:
    props = {"mfaf_meta": '{"arch": "x", "é": 1}', "": "empty key", "other": "", "k" * 200: "v"}
    data = small_model(props)
    parsed = onnx.load_from_string(data)
    assert props_of(data) == {p.key: p.value for p in parsed.metadata_props} == props
    assert props_of(small_model({})) == {}


def test_skipped_fields_are_not_read() -> None:
    """The graph (1.2 MB of weights here) is skipped by seeking, not read."""
    data = small_model({"a": "b"})

    class Counting(io.BytesIO):
        got = 0

        def read(self, n: int | None = -1) -> bytes:
            out = super().read(n)
            Counting.got += len(out)
            return out

    assert read_metadata_props(Counting(data), len(data)) == {"a": "b"}
    assert len(data) > 1_000_000 and Counting.got < 200


@pytest.mark.parametrize(
    "data",
    [b"\x8a", b"\x0a\x05ab", b"\x0f\x00", b"\xff" * 11, b"\x00\x01", b"\x08", b"\x0a"],
    ids=[
        "truncated-varint",
        "length-past-end",
        "group-wire-type",
        "long-varint",
        "field-0",
        "varint-missing",
        "length-missing",
    ],
)
def test_malformed_bytes_are_proto_errors(data: bytes) -> None:
    with pytest.raises(ProtoError):
        props_of(data)


def test_a_message_must_end_on_a_field_boundary() -> None:
    with pytest.raises(ProtoError, match="ends inside"):
        iter_fields(io.BytesIO(b"\x08\x96\x01\x10\x01"), 2, frozenset())


def test_bad_onnx_files_are_weights_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(WeightsError, match=r"junk\.onnx is not a readable ONNX model"):
        read_onnx_meta(junk)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(small_model({"mfaf_meta": "{}"})[:-3])
    with pytest.raises(WeightsError, match="not a readable ONNX model"):
        read_onnx_meta(cut)

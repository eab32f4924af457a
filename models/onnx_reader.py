"""A reader of the ONNX file format for what the agent needs of a model: its graph's nodes with their
attributes, the graph's inputs and outputs, the imported operator sets and `metadata_props`.

An ONNX file is one serialized protobuf message, `ModelProto` (onnx/onnx.proto, proto2). The protobuf wire
format (protobuf.dev, "Encoding") is a sequence of fields, each a varint key `field_number << 3 | wire_type`
and a value: a varint (type 0), 8 bytes (1), a length-prefixed run of bytes (2: strings, nested messages and
packed repeated numbers) or 4 bytes (5). This module decodes that much, so the gateway needs neither the
`onnx` nor the `protobuf` package (nor onnxruntime: `models.tree_ensemble` evaluates the graph).

Fields it does not read are skipped, except where skipping would change what the graph computes: a graph
holding initializers (constant tensors) or attributes it does not decode (tensors, subgraphs) is read, and
its nodes then say so (`Attribute.kind`), so the evaluator can refuse them instead of running something else.
A file that is not well-formed protobuf raises `OnnxFormatError`.
"""

from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from typing import Final

ML_DOMAIN: Final = "ai.onnx.ml"

# wire types
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# AttributeProto.AttributeType (onnx.proto)
FLOAT, INT, STRING, FLOATS, INTS, STRINGS = 1, 2, 3, 6, 7, 8
_ATTRIBUTE_TYPES: Final = {
    0: "undefined",
    FLOAT: "float",
    INT: "int",
    STRING: "string",
    4: "tensor",
    5: "graph",
    FLOATS: "floats",
    INTS: "ints",
    STRINGS: "strings",
    9: "tensors",
    10: "graphs",
    11: "sparse_tensor",
    12: "sparse_tensors",
    13: "type_proto",
    14: "type_protos",
}

# TensorProto.DataType names of the element types a graph's input and output may declare
ELEM_TYPES: Final = {1: "float", 6: "int32", 7: "int64", 8: "string", 9: "bool", 10: "float16", 11: "double"}


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX model."""


@dataclass(frozen=True)
class Attribute:
    """A node attribute: its name, its kind ("float", "int", "string", "floats", "ints", "strings"; another
    kind is named but not decoded) and the value in the field of that kind, as in `AttributeProto`. Repeated
    numbers are arrays (float32, int64): a tree ensemble has tens of thousands, and Python objects for each
    would cost the gateway megabytes while a model loads."""

    name: str
    kind: str
    f: float = 0.0
    i: int = 0
    s: bytes = b""
    floats: array[float] = field(default_factory=lambda: array("f"))
    ints: array[int] = field(default_factory=lambda: array("q"))
    strings: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Node:
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Attribute]


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: its name, element type (`ELEM_TYPES` or "type N", "" when not a tensor) and
    shape (a dimension's size, or its symbolic name, or None when unknown)."""

    name: str
    elem_type: str
    shape: tuple[int | str | None, ...] | None


@dataclass
class Graph:
    nodes: list[Node] = field(default_factory=list)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)  # names of constant tensors (not decoded)


@dataclass
class OnnxModel:
    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)  # domain ("" for ai.onnx) → version
    producer: str = ""
    graph: Graph = field(default_factory=Graph)
    metadata: dict[str, str] = field(default_factory=dict)


# --- the wire format --------------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    byte = buf[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 63:
            raise OnnxFormatError(f"a varint longer than 10 bytes at offset {pos}")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _field(buf: bytes, pos: int) -> tuple[int, int, int, int, int]:
    """The field at `pos`: (number, wire type, a, b, position after it), where a is the value of a varint
    or fixed-size field, and [a, b) the bytes of a length-delimited one."""
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise OnnxFormatError(f"field number 0 at offset {pos}")
    if wire == _VARINT:
        value, pos = _varint(buf, pos)
        return number, wire, value, 0, pos
    if wire == _LEN:
        size, pos = _varint(buf, pos)
        if pos + size > len(buf):
            raise IndexError(pos + size)
        return number, wire, pos, pos + size, pos + size
    if wire == _I32:
        if pos + 4 > len(buf):
            raise IndexError(pos + 4)
        return number, wire, int.from_bytes(buf[pos : pos + 4], "little"), 0, pos + 4
    if wire == _I64:
        if pos + 8 > len(buf):
            raise IndexError(pos + 8)
        return number, wire, int.from_bytes(buf[pos : pos + 8], "little"), 0, pos + 8
    raise OnnxFormatError(f"wire type {wire} (field {number}) at offset {pos}")


Field = tuple[int, int, int, int]  # field number, wire type, value (varint/fixed) or start, end (LEN)


def _fields(buf: bytes, start: int, end: int) -> list[Field]:
    """The fields of the message in buf[start:end] (`_field`'s first four)."""
    out: list[Field] = []
    pos = start
    try:
        while pos < end:
            number, wire, a, b, pos = _field(buf, pos)
            out.append((number, wire, a, b))
    except IndexError:
        raise OnnxFormatError(f"message truncated at offset {pos}") from None
    if pos != end:
        raise OnnxFormatError(f"a field runs past its message's end ({pos} > {end})")
    return out


def _text(buf: bytes, a: int, b: int) -> str:
    try:
        return buf[a:b].decode("utf-8")
    except UnicodeDecodeError as err:
        raise OnnxFormatError(f"a string that is not UTF-8 at offset {a}") from err


def _packed_varints(buf: bytes, a: int, b: int) -> list[int]:
    out = []
    pos = a
    try:
        while pos < b:
            value, pos = _varint(buf, pos)
            out.append(value)
    except IndexError:
        raise OnnxFormatError(f"packed varints truncated at offset {pos}") from None
    if pos != b:
        raise OnnxFormatError(f"packed varints run past their end at offset {a}")
    return out


_F32 = struct.Struct("<f")


def _expect(wire: int, wanted: int, what: str) -> None:
    if wire != wanted:
        raise OnnxFormatError(f"{what}: wire type {wire}, expected {wanted}")


# --- the messages -----------------------------------------------------------------------------------------


# One-byte keys of AttributeProto's repeated fields written one value at a time, as proto2 writes them (the
# `onnx` package does): floats (7, fixed32), ints (8, varint), strings (9, length-delimited). A tree
# ensemble's attributes are long runs of these; reading a run in one go keeps a model's load in milliseconds.
_FLOATS_KEY, _INTS_KEY, _STRINGS_KEY = 7 << 3 | _I32, 8 << 3 | _VARINT, 9 << 3 | _LEN


def _float_run(buf: bytes, pos: int, end: int, out: array[float]) -> int:
    """Append the values of consecutive `_FLOATS_KEY` fields from `pos` (key, 4 bytes; key, 4 bytes; ...);
    the position after them."""
    keys = buf[pos:end:5]
    n = len(keys) - len(keys.lstrip(bytes((_FLOATS_KEY,))))
    while n and pos + 5 * n > end:
        n -= 1
    # a Struct of its own: struct.unpack_from would keep its compiled format (~30 bytes a value) in a cache
    out.extend(struct.Struct("<" + "xf" * n).unpack_from(buf, pos))
    return pos + 5 * n


def _packed_floats(buf: bytes, a: int, b: int, out: array[float]) -> None:
    if (b - a) % 4:
        raise OnnxFormatError(f"packed floats of {b - a} bytes at offset {a}")
    values = array("f", buf[a:b])
    if sys.byteorder == "big":
        values.byteswap()  # the wire is little-endian
    out.extend(values)


def _int_run(buf: bytes, pos: int, end: int, out: array[int]) -> int:
    """Append the values of consecutive `_INTS_KEY` fields from `pos`; the position after them."""
    append = out.append
    while pos < end and buf[pos] == _INTS_KEY:
        byte = buf[pos + 1]
        if byte < 0x80:
            append(byte)
            pos += 2
        else:
            value, pos = _varint(buf, pos + 1)
            append(_signed64(value))
    return pos


def _string_run(buf: bytes, pos: int, end: int, out: list[bytes], seen: dict[bytes, bytes]) -> int:
    """Append the values of consecutive `_STRINGS_KEY` fields from `pos`, equal values as one object (a
    node mode is one of a few words, thousands of times); the position after them."""
    append = out.append
    while pos < end and buf[pos] == _STRINGS_KEY:
        size = buf[pos + 1]
        if size < 0x80:
            start = pos + 2
        else:
            size, start = _varint(buf, pos + 1)
        pos = start + size
        if pos > end:
            raise IndexError(pos)
        value = bytes(buf[start:pos])
        append(seen.setdefault(value, value))
    return pos


def _attribute(buf: bytes, a: int, b: int) -> Attribute:
    name = ""
    kind_code = 0
    f: float | None = None
    i: int | None = None
    s: bytes | None = None
    floats: array[float] = array("f")
    ints: array[int] = array("q")
    strings: list[bytes] = []
    seen: dict[bytes, bytes] = {}
    others: set[int] = set()
    pos = a
    try:
        while pos < b:
            key = buf[pos]
            if key == _FLOATS_KEY:
                after = _float_run(buf, pos, b, floats)
                if after > pos:
                    pos = after
                    continue
            elif key == _INTS_KEY:
                pos = _int_run(buf, pos, b, ints)
                continue
            elif key == _STRINGS_KEY:
                pos = _string_run(buf, pos, b, strings, seen)
                continue
            number, wire, x, y, pos = _field(buf, pos)
            if number == 1:
                _expect(wire, _LEN, "attribute name")
                name = _text(buf, x, y)
            elif number == 20:
                _expect(wire, _VARINT, "attribute type")
                kind_code = x
            elif number == 2:
                _expect(wire, _I32, "attribute f")
                f = _F32.unpack(x.to_bytes(4, "little"))[0]
            elif number == 3:
                _expect(wire, _VARINT, "attribute i")
                i = _signed64(x)
            elif number == 4:
                _expect(wire, _LEN, "attribute s")
                s = bytes(buf[x:y])
            elif number == 7:  # floats, packed (or one by one, short of a key at the end)
                if wire == _LEN:
                    _packed_floats(buf, x, y, floats)
                else:
                    _expect(wire, _I32, "attribute floats")
                    floats.append(_F32.unpack(x.to_bytes(4, "little"))[0])
            elif number == 8:  # ints, packed
                _expect(wire, _LEN, "attribute ints")
                ints.extend(_signed64(v) for v in _packed_varints(buf, x, y))  # short-lived ints
            elif number == 9:
                _expect(wire, _LEN, "attribute strings")
                strings.append(bytes(buf[x:y]))
            elif number in (5, 6, 10, 11, 14, 15, 21, 22, 23):  # tensors, graphs, type protos, references
                others.add(number)
    except IndexError:
        raise OnnxFormatError(f"attribute truncated at offset {pos}") from None
    if pos != b:
        raise OnnxFormatError(f"an attribute's field runs past its end ({pos} > {b})")
    kind = _ATTRIBUTE_TYPES.get(kind_code, f"type {kind_code}")
    if others:  # fields this reader does not interpret (tensors, graphs, ...): named, so they are refused
        kind = f"{kind} with fields {sorted(others)}"
    elif (kind == "float" and f is None) or (kind == "int" and i is None) or (kind == "string" and s is None):
        kind = f"{kind} without a value"
    return Attribute(
        name,
        kind,
        f=f or 0.0,
        i=i or 0,
        s=s or b"",
        floats=floats,
        ints=ints,
        strings=tuple(strings),
    )


def _node(buf: bytes, a: int, b: int) -> Node:
    inputs: list[str] = []
    outputs: list[str] = []
    op_type = domain = ""
    attributes: dict[str, Attribute] = {}
    for number, wire, x, y in _fields(buf, a, b):
        if number in (1, 2, 4, 7):
            _expect(wire, _LEN, f"node field {number}")
            text = _text(buf, x, y)
            if number == 1:
                inputs.append(text)
            elif number == 2:
                outputs.append(text)
            elif number == 4:
                op_type = text
            else:
                domain = text
        elif number == 5:
            _expect(wire, _LEN, "node attribute")
            attribute = _attribute(buf, x, y)
            if attribute.name in attributes:
                raise OnnxFormatError(f"node {op_type}: attribute {attribute.name} given twice")
            attributes[attribute.name] = attribute
    return Node(op_type, domain, tuple(inputs), tuple(outputs), attributes)


def _shape(buf: bytes, a: int, b: int) -> tuple[int | str | None, ...]:
    dims: list[int | str | None] = []
    for number, wire, x, y in _fields(buf, a, b):
        if number != 1:
            continue
        _expect(wire, _LEN, "shape dimension")
        dim: int | str | None = None
        for n, w, p, q in _fields(buf, x, y):
            if n == 1 and w == _VARINT:
                dim = _signed64(p)
            elif n == 2 and w == _LEN:
                dim = _text(buf, p, q)
        dims.append(dim)
    return tuple(dims)


def _value_info(buf: bytes, a: int, b: int) -> ValueInfo:
    name = ""
    elem_type = ""
    shape: tuple[int | str | None, ...] | None = None
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1:
            _expect(wire, _LEN, "value name")
            name = _text(buf, x, y)
        elif number == 2:
            _expect(wire, _LEN, "value type")
            for n, w, p, q in _fields(buf, x, y):
                if n != 1 or w != _LEN:  # 1: a tensor; sequences, maps, optionals stay ""
                    continue
                for tn, tw, tp, tq in _fields(buf, p, q):
                    if tn == 1 and tw == _VARINT:
                        elem_type = ELEM_TYPES.get(tp, f"type {tp}")
                    elif tn == 2 and tw == _LEN:
                        shape = _shape(buf, tp, tq)
    return ValueInfo(name, elem_type, shape)


def _graph(buf: bytes, a: int, b: int) -> Graph:
    graph = Graph()
    for number, wire, x, y in _fields(buf, a, b):
        if number in (1, 5, 11, 12, 15):
            _expect(wire, _LEN, f"graph field {number}")
        if number == 1:
            graph.nodes.append(_node(buf, x, y))
        elif number == 11:
            graph.inputs.append(_value_info(buf, x, y))
        elif number == 12:
            graph.outputs.append(_value_info(buf, x, y))
        elif number in (5, 15):  # initializer, sparse_initializer: their name is field 8 / the values' 8
            graph.initializers.append(f"initializer at offset {x}")
    return graph


def _string_pair(buf: bytes, a: int, b: int) -> tuple[str, str]:
    key = value = ""
    for number, wire, x, y in _fields(buf, a, b):
        if number in (1, 2):
            _expect(wire, _LEN, "metadata entry")
            if number == 1:
                key = _text(buf, x, y)
            else:
                value = _text(buf, x, y)
    return key, value


def _opset(buf: bytes, a: int, b: int) -> tuple[str, int]:
    domain, version = "", 0
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1 and wire == _LEN:
            domain = _text(buf, x, y)
        elif number == 2 and wire == _VARINT:
            version = _signed64(x)
    return domain, version


def read_model(data: bytes) -> OnnxModel:
    """The parts of a serialized `ModelProto` this package uses."""
    model = OnnxModel()
    graphs = 0
    for number, wire, x, y in _fields(data, 0, len(data)):
        if number == 1:
            _expect(wire, _VARINT, "ir_version")
            model.ir_version = x
        elif number == 2:
            _expect(wire, _LEN, "producer_name")
            model.producer = _text(data, x, y)
        elif number == 7:
            _expect(wire, _LEN, "graph")
            model.graph = _graph(data, x, y)
            graphs += 1
        elif number == 8:
            _expect(wire, _LEN, "opset_import")
            domain, version = _opset(data, x, y)
            model.opsets[domain] = max(version, model.opsets.get(domain, 0))
        elif number == 14:
            _expect(wire, _LEN, "metadata_props")
            key, value = _string_pair(data, x, y)
            model.metadata[key] = value
    if graphs != 1 or model.ir_version == 0:
        raise OnnxFormatError(f"{graphs} graphs and IR version {model.ir_version}: not an ONNX model")
    return model

"""Checks on an ONNX graph's bytes before onnxruntime sees them.

The runtime has no `onnx` package, so this walks the protobuf wire format
itself, just far enough to find every tensor (initialisers, sparse
initialisers, Constant-node and attribute tensors, in subgraphs and functions
too) and ask whether it points at external data. onnxruntime would resolve
such a reference against the current working directory when a model is loaded
from bytes: bytes that were never checksummed would run, depending on where the
command was started. Field numbers are those of onnx.proto (ModelProto.graph 7,
GraphProto.initializer 5, TensorProto.data_location 14, ...).

The walk slices views of the buffer and copies nothing; a model file is walked
through a read-only memory map, so checking a 450 MB graph costs no memory of
its own (only the pages of the message headers it reads are touched).
"""

from __future__ import annotations

import mmap
from pathlib import Path

from winclip.runtime.errors import BundleError, WinclipError

# message kind -> {field number: kind of the embedded message}
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNCTION, _TRAINING = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _FUNCTION: {7: _NODE},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1
_MAX_DEPTH = 64


class GraphFormatError(WinclipError, ValueError):
    """Bytes that are not a well-formed ONNX model."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise GraphFormatError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) for each field; value is an int or a memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise GraphFormatError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise GraphFormatError("field runs past the end of its message")
        yield number, wire, value


def external_tensors(model: bytes) -> list[str]:
    """Names of the tensors anywhere in the model that point at external data."""
    found: list[str] = []
    stack = [(memoryview(model), _MODEL, 0)]
    while stack:
        buf, kind, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise GraphFormatError("messages nested too deeply")
        if kind == _TENSOR:
            name, external = "", False
            for number, wire, value in _fields(buf):
                if number == _TENSOR_NAME and wire == 2:
                    name = bytes(value).decode("utf-8", "replace")
                elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
                    external = True
                elif number == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
                    external = True
            if external:
                found.append(name or "<unnamed>")
            continue
        children = _CHILDREN[kind]
        for number, wire, value in _fields(buf):
            child = children.get(number)
            if child is not None and wire == 2:
                stack.append((value, child, depth + 1))
    return found


def require_inline_weights(model: bytes | Path, name: str) -> None:
    """BundleError unless the ONNX graph (bytes, or a file walked through a memory map) is well formed and holds
    every tensor inline (any backend's rule)."""
    try:
        external = external_tensors_in_file(model) if isinstance(model, Path) else external_tensors(model)
    except GraphFormatError as exc:
        raise BundleError(f"{name} is not a well-formed ONNX model: {exc}") from None
    if external:
        raise BundleError(f"{name} points at external data for {len(external)} tensors "
                          f"(e.g. {external[0]!r}); a bundle's graphs must hold their weights inline")


def external_tensors_in_file(path: str | Path) -> list[str]:
    """`external_tensors` of a model file, walked through a read-only memory map."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return external_tensors(b"")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            try:
                return external_tensors(mapped)
            except GraphFormatError as exc:
                problem = str(exc)  # leaving this block frees the traceback's views, so the map can close
    raise GraphFormatError(problem)

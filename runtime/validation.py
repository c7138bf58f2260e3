"""Typed, range-checked reading of JSON documents (bundle manifests, line profiles).

Every failure names the field by its dotted path, so a hand-edited or hostile
document is refused in one line that says what to fix. Bool is not an integer
and a float is not an integer here, unlike in Python.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath

from winclip.runtime.defaults import MAX_JSON_BYTES, MAX_NAME_CHARS
from winclip.runtime.errors import WinclipError, first_line, short_repr
from winclip.runtime.files import FileRefused, read_regular

SHA256 = re.compile(r"[0-9a-f]{64}")


class SchemaError(WinclipError, ValueError):
    """A JSON field that is missing, of the wrong type or out of range."""


def read_json(path: Path, what: str) -> object:
    """Parse a small JSON file; any failure is a SchemaError that says what is wrong (the caller names the file).

    NaN and Infinity are not JSON numbers: they are refused with the field that holds one.
    """
    try:
        text = read_regular(path, MAX_JSON_BYTES, what).decode("utf-8")
        data = json.loads(text)
    except FileRefused as exc:
        raise SchemaError(f"the {what} is {exc.reason}") from None
    except RecursionError:
        raise SchemaError(f"the {what} is nested too deeply") from None
    except OSError as exc:
        raise SchemaError(f"cannot read the {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SchemaError(f"the {what} is not UTF-8 text: {first_line(exc)}") from None
    except ValueError as exc:  # json's own message says where
        raise SchemaError(f"the {what} is not valid JSON: {first_line(exc)}") from None
    where = _non_finite(data, "")
    if where is not None:
        raise SchemaError(f"field {where[0] or 'document'} is {where[1]}, which is not a JSON number")
    return data


def _non_finite(value: object, path: str):
    """(dotted path, token) of the first NaN or infinity in a parsed document, or None."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return where, repr(item).replace("inf", "Infinity").replace("nan", "NaN")
        if isinstance(item, dict):
            stack += [(v, f"{where}.{k}" if where else str(k)) for k, v in item.items()]
        elif isinstance(item, list):
            stack += [(v, f"{where}[{i}]") for i, v in enumerate(item)]
    return None


def plain_file_name(name: object, field: str) -> str:
    """A relative POSIX path with no '..', no absolute part and no over-long component."""
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{field} must be a non-empty file name")
    pure = PurePosixPath(name)
    if (pure.is_absolute() or "\\" in name or "\x00" in name
            or any(p in ("..", ".", "") for p in name.split("/"))):
        raise SchemaError(f"{field} {name[:80]!r} is not a plain relative path")
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_CHARS for p in pure.parts) or len(pure.parts) > 8:
        raise SchemaError(f"{field} {name[:80]!r}... is too long")
    return name


class Node:
    """A JSON object being read, with the dotted path that names it in messages."""

    def __init__(self, data: object, path: str):
        if not isinstance(data, dict):
            raise SchemaError(f"{path or 'document'} must be an object, got {_kind(data)}")
        self.data = data
        self.path = path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default=...):
        if key not in self.data:
            if default is ...:
                raise SchemaError(f"missing field {self._name(key)}")
            return default
        return self.data[key]

    def node(self, key: str) -> "Node":
        return Node(self.raw(key), self._name(key))

    def int(self, key: str, lo: int, hi: int, default=...) -> int:
        return check_int(self.raw(key, default), self._name(key), lo, hi)

    def float(self, key: str, lo: float, hi: float, default=..., lo_open: bool = False) -> float:
        return check_float(self.raw(key, default), self._name(key), lo, hi, lo_open)

    def str(self, key: str, default=..., choices=None, max_len: int = 4096) -> str:
        value = self.raw(key, default)
        name = self._name(key)
        if not isinstance(value, str):
            raise SchemaError(f"field {name} must be a string, got {_kind(value)}")
        if len(value) > max_len:
            raise SchemaError(f"field {name} is longer than {max_len} characters")
        if choices is not None and value not in choices:
            raise SchemaError(f"field {name} is {value[:80]!r}; this version knows {', '.join(map(repr, choices))}")
        return value

    def bool(self, key: str, default=...) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise SchemaError(f"field {self._name(key)} must be true or false, got {_kind(value)}")
        return value

    def sha256(self, key: str) -> str:
        value = self.str(key, max_len=64)
        if not SHA256.fullmatch(value):
            raise SchemaError(f"field {self._name(key)} is not a sha256 hex digest")
        return value

    def file(self, key: str) -> str:
        return plain_file_name(self.raw(key), f"field {self._name(key)}")

    def list(self, key: str, min_len: int = 0, max_len: int = 1 << 16, default=...) -> list:
        value = self.raw(key, default)
        name = self._name(key)
        if not isinstance(value, list):
            raise SchemaError(f"field {name} must be a list, got {_kind(value)}")
        if not min_len <= len(value) <= max_len:
            raise SchemaError(f"field {name} must have {min_len}..{max_len} entries, has {len(value)}")
        return value

    def ints(self, key: str, n_min: int, n_max: int, lo: int, hi: int) -> list[int]:
        return [check_int(v, f"{self._name(key)}[{i}]", lo, hi) for i, v in enumerate(self.list(key, n_min, n_max))]

    def floats(self, key: str, n: int, lo: float, hi: float, lo_open: bool = False) -> list[float]:
        return [check_float(v, f"{self._name(key)}[{i}]", lo, hi, lo_open) for i, v in enumerate(self.list(key, n, n))]

    def strs(self, key: str, max_len: int = 1 << 12) -> list[str]:
        items = self.list(key)
        for i, v in enumerate(items):
            if not isinstance(v, str) or len(v) > max_len:
                raise SchemaError(f"field {self._name(key)}[{i}] must be a string of at most {max_len} characters")
        return items

    def mapping(self, key: str, max_len: int = 1 << 12, default=...) -> dict:
        value = self.raw(key, default)
        if not isinstance(value, dict):
            raise SchemaError(f"field {self._name(key)} must be an object, got {_kind(value)}")
        if len(value) > max_len:
            raise SchemaError(f"field {self._name(key)} has more than {max_len} entries")
        return value


def check_int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"field {name} must be an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise SchemaError(f"field {name} is {short_repr(value)}, outside {lo}..{hi}")
    return value


def check_float(value: object, name: str, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"field {name} must be a number, got {_kind(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer too large for a float
        raise SchemaError(f"field {name} is {short_repr(value)}, outside [{lo}, {hi}]") from None
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise SchemaError(f"field {name} is {short_repr(value)}, outside {bracket}{lo}, {hi}]")
    return value


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)



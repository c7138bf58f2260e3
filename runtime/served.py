"""How an engine is named when it is served: the model version that carries its sha256, and its address.

A Triton model version is a positive 64-bit integer. The version an engine is
served under is the first 60 bits of its sha256 (15 hex digits), so an edge
client that holds the bundle can tell from the server's answer alone which of
its engines is served, or that none is (a server of another bundle). A model
repository written for NVIDIA's own server images also carries the whole
sha256 in its config's parameters (`ENGINE_SHA256_PARAMETER`). Both the client
backend (backends/triton.py) and the server (winclip.serve) name engines here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from winclip.runtime.defaults import TRITON_PORTS, TRITON_SCHEME
from winclip.runtime.errors import WinclipError

VERSION_HEX_DIGITS = 15  # 60 bits: a positive int64, written in decimal it never starts with 0
ENGINE_SHA256_PARAMETER = "winclip_engine_sha256"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # what Triton and PyTriton accept as a model name


class AddressError(WinclipError, ValueError):
    """A served engine's address that cannot be used (not triton://HOST[:PORT]/MODEL)."""


def served_version(sha256: str) -> int:
    """The model version an engine with this sha256 is served under."""
    return int(sha256[:VERSION_HEX_DIGITS], 16)


def check_model_name(name: str) -> str:
    """The name, or AddressError when Triton would refuse it."""
    if not MODEL_NAME.fullmatch(name or ""):
        raise AddressError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    return name


@dataclass(frozen=True)
class ServedAddress:
    """Where a served engine is: Triton's gRPC endpoint and the model's name."""

    host: str
    port: int
    model: str

    @classmethod
    def parse(cls, url: str) -> "ServedAddress":
        """triton://HOST[:PORT]/MODEL (PORT: Triton's gRPC port, 8001 by default); AddressError otherwise."""
        usage = f"use {TRITON_SCHEME}://HOST[:PORT]/MODEL"
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise AddressError(f"engine address {url!r}: {exc}; {usage}") from None
        if parts.scheme != TRITON_SCHEME or not parts.hostname:
            raise AddressError(f"engine address {url!r}: {usage}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise AddressError(f"engine address {url!r}: no user, query or fragment; {usage}")
        model = parts.path.strip("/")
        if not model:
            raise AddressError(f"engine address {url!r} names no model; {usage}")
        return cls(parts.hostname, TRITON_PORTS["grpc"] if port is None else port, check_model_name(model))

    @property
    def target(self) -> str:
        """HOST:PORT as gRPC wants it ([::1]:8001 for an IPv6 address)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{TRITON_SCHEME}://{self.target}/{self.model}"

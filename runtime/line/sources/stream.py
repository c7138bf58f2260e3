"""Stream URLs: rtsp://, http(s):// (MJPEG or anything FFmpeg reads), udp://, srt:// ..."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

import cv2

from winclip.runtime.line.redact import redact_url
from winclip.runtime.line.sources.base import SourceError, SourceKind, SourceSpec, built_with
from winclip.runtime.line.sources.readers import LiveReader

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}


def why_unreachable(url: str, timeout_s: float) -> str | None:
    """A reason a stream server cannot be reached over TCP (refused, no route, timeout), or None if it answers."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    if not parts.hostname or port is None:
        return None
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"cannot connect to {parts.hostname}:{port} ({exc.strerror or type(exc).__name__})"


class Stream(SourceKind):
    name = "stream"
    live = True
    reader = LiveReader

    def parse(self, text: str) -> SourceSpec | None:
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
        if not scheme:
            return None
        name = scheme.group(1).lower()
        if name not in STREAM_SCHEMES:
            raise SourceError(f"--source {redact_url(text)!r}: unsupported scheme {name}://; streams can be "
                              f"{', '.join(s + '://' for s in STREAM_SCHEMES)}")
        return self.spec(text, text, redact_url(text))

    def capture(self, spec: SourceSpec, timeout_s: float):
        ms = int(timeout_s * 1000)
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        return cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG if built_with("FFMPEG") else cv2.CAP_ANY, timeouts)

    def why_not_opened(self, spec: SourceSpec, timeout_s: float) -> str:
        tcp = urlsplit(spec.target).scheme.lower() in DEFAULT_PORTS  # udp:// and srt:// cannot be probed this way
        reason = why_unreachable(spec.target, min(timeout_s, 3.0)) if tcp else None
        return reason or "the server answered, but OpenCV could not read a video stream from it"


KIND = Stream()

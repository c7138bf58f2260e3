"""Stream URLs: rtsp://, http(s):// (MJPEG or anything FFmpeg reads), udp://, srt:// ..."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

import cv2

from winclip.runtime.line.redact import redact_url
from winclip.runtime.line.sources.base import SourceError, SourceKind, SourceSpec, built_with
from winclip.runtime.line.sources.readers import LiveReader

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80, "https": 443}


FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"  # OpenCV's FFmpeg backend reads "key;value|key;value" from here


def set_rtsp_transport(transport: str) -> str:
    """Make OpenCV's FFmpeg open RTSP over `transport` (tcp | udp), keeping every other option the user set.

    OpenCV's FFmpeg backend uses TCP for RTSP when OPENCV_FFMPEG_CAPTURE_OPTIONS is unset, but once the
    variable holds any option it no longer adds that default, and RTSP falls back to UDP; so the transport
    is always written into the variable itself. Returns the new value. Call before any source opens.
    """
    if transport not in ("tcp", "udp"):
        raise ValueError(f"RTSP transport must be tcp or udp, got {transport!r}")
    kept = [item for item in os.environ.get(FFMPEG_OPTIONS, "").split("|")
            if item.strip() and item.split(";", 1)[0].strip() != "rtsp_transport"]
    value = "|".join([*kept, f"rtsp_transport;{transport}"])
    os.environ[FFMPEG_OPTIONS] = value
    return value


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

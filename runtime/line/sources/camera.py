"""Cameras: an index (0) or a device (/dev/video0)."""

from __future__ import annotations

from pathlib import Path

import cv2

from winclip.runtime.line.sources.base import SourceKind, SourceSpec
from winclip.runtime.line.sources.readers import LiveReader


class Camera(SourceKind):
    name = "camera"
    live = True
    reader = LiveReader

    def parse(self, text: str) -> SourceSpec | None:
        if text.isdigit():
            return self.spec(text, int(text), f"camera:{int(text)}")
        if "://" not in text and Path(text).is_char_device():
            return self.spec(text, text, f"camera:{text}")
        return None

    def capture(self, spec: SourceSpec, timeout_s: float):
        cap = cv2.VideoCapture(spec.target)
        if cap.isOpened():  # where the backend honours them: no queue of old frames, no read blocking for long
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout_s * 1000))
        return cap

    def why_not_opened(self, spec: SourceSpec, timeout_s: float) -> str:
        return "no such device, or it is in use"


KIND = Camera()

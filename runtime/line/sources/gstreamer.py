"""GStreamer pipelines ("videotestsrc ! videoconvert ! appsink"), where OpenCV was built with GStreamer."""

from __future__ import annotations

from pathlib import Path

import cv2

from winclip.runtime.line.sources.base import SourceError, SourceKind, SourceSpec, built_with
from winclip.runtime.line.sources.readers import LiveReader


def has_gstreamer() -> bool:
    return built_with("GStreamer")


class GStreamer(SourceKind):
    name = "gstreamer"
    live = True
    reader = LiveReader

    def parse(self, text: str) -> SourceSpec | None:
        if "!" not in text or Path(text).exists():
            return None
        if not has_gstreamer():
            raise SourceError(f"--source {text[:60]!r} looks like a GStreamer pipeline, but this OpenCV was built "
                              "without GStreamer (cv2.getBuildInformation() says GStreamer: NO)")
        first = text.split("!", 1)[0].split()
        return self.spec(text, text, f"gstreamer:{first[0] if first else 'pipeline'}")

    def capture(self, spec: SourceSpec, timeout_s: float):
        return cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)

    def why_not_opened(self, spec: SourceSpec, timeout_s: float) -> str:
        return "GStreamer could not start the pipeline"


KIND = GStreamer()

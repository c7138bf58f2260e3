"""Frame sources: the table of source kinds, and turning --source / --roi texts into specs and readers.

`SOURCE_KINDS` is the table, in the order a --source text is tried against it:
the first kind whose `parse` recognises the text owns it. A new kind of source
is one module in this package (a `SourceKind` with its `parse`, `capture` and
reader) and one row here.
"""

from __future__ import annotations

from dataclasses import replace

from winclip.runtime.line.redact import redact_url
from winclip.runtime.line.sources import camera, gstreamer, images, stream, video
from winclip.runtime.line.sources.base import Roi, SourceError, SourceKind, SourceSpec
from winclip.runtime.line.sources.readers import LiveReader, SourceReader, open_capture

SOURCE_KINDS: dict[str, SourceKind] = {kind.name: kind for kind in (
    camera.KIND,  # 0, /dev/video0
    stream.KIND,  # rtsp://..., http://...
    gstreamer.KIND,  # "... ! appsink"
    images.KIND,  # a folder, a glob, an image file: batch mode
    video.KIND,  # any other file
)}

__all__ = ["SOURCE_KINDS", "LiveReader", "Roi", "SourceError", "SourceReader", "SourceSpec", "make_reader",
           "open_capture", "parse_source", "parse_sources", "redact_url"]


def parse_source(text: str) -> SourceSpec:
    """What one --source names; SourceError when it is none of the kinds a source can be."""
    text = text.strip()
    if not text:
        raise SourceError("--source is empty")
    for kind in SOURCE_KINDS.values():
        spec = kind.parse(text)
        if spec is not None:
            return spec
    raise SourceError(f"source not found: {redact_url(text)} (not a folder, file, camera index, stream URL or "
                      "GStreamer pipeline)")


def parse_sources(texts: list[str], rois: list[str] = ()) -> list[SourceSpec]:
    """Every --source, with the Nth --roi applied to the Nth source (`full` leaves one uncropped); names made unique."""
    specs = [parse_source(t) for t in texts]
    if len(rois) > len(specs):
        raise SourceError(f"{len(rois)} --roi for {len(specs)} --source: the Nth --roi crops the Nth source")
    specs = [replace(spec, roi=None if text.strip().lower() in ("full", "-") else Roi.parse(text))
             for spec, text in zip(specs, rois)] + specs[len(rois):]
    seen: dict[str, int] = {}
    unique = []
    for spec in specs:
        seen[spec.name] = seen.get(spec.name, 0) + 1
        unique.append(spec if seen[spec.name] == 1 else replace(spec, name=f"{spec.name}#{seen[spec.name]}"))
    return unique


def make_reader(spec: SourceSpec, status, every: int = 1, on_notice=None, wake=None, **options) -> SourceReader:
    """The reader the spec's kind names (live options such as backoff_s go to live readers only)."""
    reader = SOURCE_KINDS[spec.kind].reader
    if reader is None:
        raise SourceError(f"{spec.text}: a folder of images is scored on its own (batch mode), not in a live run")
    return reader(spec, status, every, on_notice, wake, **(options if spec.live else {}))

"""The page's memory of the past stays bounded for runs of weeks: the gallery keeps pictures and originals of the
newest flagged frames only (within a byte budget) and an index to page back through; older pictures come from
the run's saved overlays, and only from inside that folder; the trend keeps fixed time buckets."""

from __future__ import annotations

import os

import numpy as np

from conftest import read, textile_images
from winclip.runtime.detector import FrameResult
from winclip.runtime.line.frames import Frame
from winclip.runtime.line.history import Gallery, ScoreTrend


def flagged(i: int, image: np.ndarray) -> tuple[Frame, FrameResult, dict]:
    amap = np.full(image.shape[:2], 0.2, np.float32)
    amap[10:40, 10:40] = 0.9
    result = FrameResult(0.8 + i / 1000, amap, True, {}, [], 0.5, 0.6)
    frame = Frame("cam1", i, 1_700_000_000.0 + i, image)
    return frame, result, {"threshold": 0.5, "regions": [{"box": [10, 10, 30, 30], "area": 900, "peak": 0.9}]}


def test_the_gallery_keeps_the_newest_pictures_within_a_budget_and_pages_back(tmp_path):
    image = read(textile_images("nominal", 1)[0])
    one_mb = image.nbytes / (1 << 20)
    saved = tmp_path / "overlays"
    saved.mkdir()
    gallery = Gallery(pictures=4, originals_mb=2.5 * one_mb, index=6, overlay_root=saved)
    for i in range(9):
        frame, result, event = flagged(i, image.copy())
        path = saved / f"{i}.jpg"
        path.write_bytes(b"\xff\xd8 saved overlay %d" % i)
        event["overlay"] = str(path) if i != 4 else str(tmp_path / "elsewhere.jpg")
        gallery.add(frame, result, event, version=1)
    (tmp_path / "elsewhere.jpg").write_bytes(b"not the run's")
    first = gallery.page(limit=4)
    assert [i["frame"] for i in first["items"]] == [8, 7, 6, 5] and first["total"] == 6
    assert [i["original"] for i in first["items"]] == [True, True, False, False]  # 2.5 originals' worth of memory
    second = gallery.page(before=first["older"], limit=4)
    assert [i["frame"] for i in second["items"]] == [4, 3] and second["older"] is None  # the index keeps 6
    assert gallery.picture(first["items"][0]["id"])[:2] == b"\xff\xd8"  # drawn and kept in memory
    assert gallery.picture(second["items"][1]["id"]) == b"\xff\xd8 saved overlay 3"  # from the run's overlays
    assert gallery.picture(second["items"][0]["id"]) is None  # a path outside OUT/overlays is never read
    os.symlink(tmp_path / "elsewhere.jpg", saved / "link.jpg")
    frame, result, event = flagged(9, image.copy())
    event["overlay"] = str(saved / "link.jpg")
    item = gallery.add(frame, result, event)
    gallery._jpegs.pop(item.id)  # as if it had aged out of memory
    assert gallery.picture(item.id) is None  # a link out of the folder is refused too
    assert sum(a.nbytes for a in gallery._originals.values()) <= 2.5 * image.nbytes


def test_the_trend_keeps_fixed_buckets_over_its_window():
    trend = ScoreTrend(window_s=60, bucket_s=2)
    start = 1_700_000_000.0
    for i in range(6000):  # 100 minutes at 1 frame/s
        trend.add("cam1", 0.1 + (i % 7) / 100, i % 50 == 0, 0.5, when=start + i)
    series = trend.series(now=start + 6000)
    points = series["sources"]["cam1"]
    assert len(points) <= 31 and sum(p[4] for p in points) <= 62  # the last minute only
    assert len(trend._buckets["cam1"]) == 30  # bounded storage, whatever the run's length
    t, lo, mean, hi, n, anomalous, threshold = points[-1]
    assert lo <= mean <= hi and threshold == 0.5 and n == 2

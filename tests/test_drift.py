"""Drift alarms: the scores of frames judged normal against the profile's reference scores. A real video whose
brightness ramps (written with OpenCV from real textile images) raises exactly one `drift` event, the /metrics
gauge and the page's banner; a stable video of the same kind of parts raises none."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest

from conftest import read, textile_images
from test_live_loop import write_video, wait_for
from test_operator_page import Run, browser, calibrate, shot  # noqa: F401  (browser is a fixture)
from winclip.runtime import Detector
from winclip.runtime.line.drift import DriftWatch, ks_distance, ks_pvalue

WINDOW, MIN_FRAMES = 40, 30  # smaller than the live defaults (200 / 50) so a short video fills them


def test_ks_statistic_and_p_value_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n, m, shift in ((20, 40, 0.0), (20, 200, 0.5), (100, 100, 0.2), (30, 60, 1.5)):
        a, b = rng.normal(0, 1, n), rng.normal(shift, 1, m)
        expected = stats.ks_2samp(a, b, method="asymp")
        d = ks_distance(a, b)
        assert d == pytest.approx(expected.statistic, abs=1e-12)
        assert ks_pvalue(d, n, m) == pytest.approx(expected.pvalue, abs=0.02)


def test_one_event_per_episode_and_the_run_start_as_reference_without_a_profile():
    rng = np.random.default_rng(2)
    watch = DriftWatch(None, window=40, min_frames=30)
    events = []
    scores = [*rng.normal(0.30, 0.01, 40), *rng.normal(0.30, 0.01, 60),  # the run's start: the reference, then calm
              *rng.normal(0.34, 0.01, 120),  # the line changes: one episode, however long
              *rng.normal(0.30, 0.01, 80)]  # and back: the episode ends once
    for score in scores:
        events += [e for e in [watch.observe("cam1", float(score), False)] if e]
        watch.observe("cam1", 0.99, True)  # anomalous frames never enter the window
    assert [e["event"] for e in events] == ["drift", "drift_cleared"]
    assert events[0]["direction"] == "up" and events[0]["reference"] == "run start"
    assert events[0]["ks_distance"] >= 0.5 and events[0]["p_value"] < 1e-3 and events[1]["lasted_s"] >= 0
    assert watch.state()["cam1"]["episodes"] == 1 and not watch.state()["cam1"]["drifting"]


@pytest.fixture(scope="module")
def line(tiny_bundle, tmp_path_factory):
    profile = calibrate(tiny_bundle, tmp_path_factory.mktemp("drift"))
    return profile, Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu", threads=1)


def parts() -> list[np.ndarray]:
    """80 real good parts the profile has not seen."""
    return [read(p) for p in textile_images("nominal", 80, start=400)]


def brighter(image: np.ndarray, gain: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def metrics(run) -> str:
    with urllib.request.urlopen(run.url + "metrics", timeout=10) as response:
        return response.read().decode()


def test_a_brightness_ramp_raises_exactly_one_drift_event(line, tmp_path, browser):
    profile, detector = line
    images = parts()
    gains = [1.0] * 40 + list(np.linspace(1.0, 2.0, 60)) + [2.0] * 60  # steady, a lamp ramps up, stays bright
    video = write_video(tmp_path / "ramp.avi", [brighter(images[i % 80], g) for i, g in enumerate(gains)])
    run = Run(detector, [video], profile=profile, drift=DriftWatch(window=WINDOW, min_frames=MIN_FRAMES))
    try:
        run.finish(120)
        events = run.sink.events
        drift = [e for e in events if e.get("event", "").startswith("drift")]
        assert [e["event"] for e in drift] == ["drift"], drift
        frames = [e for e in events if "frame" in e]
        assert len(frames) == 160
        first_frame_after = next(e for e in events[events.index(drift[0]):] if "frame" in e)
        assert first_frame_after["frame"] > 40  # raised during the ramp, not before it
        assert drift[0]["source"] == str(video) and drift[0]["reference"] == "profile"
        assert drift[0]["reference_size"] == 20 and drift[0]["ks_distance"] >= 0.5
        text = metrics(run)
        assert f'winclip_drift{{source="{video}"}} 1.0' in text
        assert f'winclip_drift_episodes_total{{source="{video}"}} 1.0' in text
        browser.get(run.url)
        assert wait_for(lambda: browser.find_element("id", "drift").is_displayed(), 10)
        banner = browser.find_element("id", "drift").text
        assert banner.startswith("DRIFT") and str(video) in banner and "profile's normals" in banner
        shot(browser, "winclip-operator-page-drift.png")
    finally:
        run.close()


def test_a_stable_video_raises_no_drift(line, tmp_path):
    profile, detector = line
    images = parts()
    video = write_video(tmp_path / "stable.avi", [images[i % 80] for i in range(160)])
    run = Run(detector, [video], profile=profile, drift=DriftWatch(window=WINDOW, min_frames=MIN_FRAMES))
    try:
        run.finish(120)
        assert len([e for e in run.sink.events if "frame" in e]) == 160
        assert not [e for e in run.sink.events if e.get("event", "").startswith("drift")]
        state = run.desk.snapshot()["drift"][str(video)]
        assert state["distance"] is not None and state["distance"] < 0.5 and state["window"] == WINDOW
        assert f'winclip_drift{{source="{video}"}} 0.0' in metrics(run)
    finally:
        run.close()

"""The operator's page in a real browser (Debian's headless Chromium through chromedriver): a live run on a real
video (written with OpenCV from real textile images), its trend and gallery, "this part is good" with and without
the operator token, the profile version changing between two frames, and the taught frame scoring lower on the
next pass of the same video.

The run is wired as winclip-inspect wires it (OperatorDesk between the loop and the page, the live server); a
gate between the two passes of the video holds the loop until the taught version is written, so "the next pass"
is the same frames, scored by the new version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import read, run_cli, textile_images
from test_live_loop import FAST, ListSink, decoded_frames, wait_for, write_video
from winclip.runtime import Detector
from winclip.runtime.line.inspection import Inspection
from winclip.runtime.line.loop import LiveLoop, LiveOutputs
from winclip.runtime.line.operator import OperatorDesk
from winclip.runtime.line.server import LiveServer
from winclip.runtime.line.sources import parse_sources
from winclip.runtime.line.status import LiveStatus

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TOKEN = "test-operator-token-0123456789"
SHOTS = Path(os.environ.get("WINCLIP_SCREENSHOTS", tempfile.gettempdir()))  # where the page's pictures go


def browser_or_skip():
    """A headless Chromium, or a skip here (CI installs it and sets WINCLIP_REQUIRE_BROWSER=1: then a failure)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("WINCLIP_REQUIRE_BROWSER"):
            raise
        pytest.skip("selenium is not installed (pip install '.[dev]')")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        if os.environ.get("WINCLIP_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="winclip-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    driver.cleanup_dir = profile
    return driver


@pytest.fixture
def browser():
    driver = browser_or_skip()
    yield driver
    driver.quit()
    shutil.rmtree(driver.cleanup_dir, ignore_errors=True)


def calibrate(bundle: Path, folder: Path) -> Path:
    """A line profile from 24 real normal textiles (4 in memory, 20 held out), as winclip-calibrate makes it."""
    normals = folder / "normals"
    normals.mkdir(parents=True)
    for p in textile_images("nominal", 24):
        shutil.copy(p, normals / p.name)
    out = folder / "line3"
    proc = run_cli("winclip-calibrate", str(bundle), "--normal", str(normals), "--out", str(out), "--object", "bottle",
                   "--shots", "4", "--false-alarm-rate", "0.05")
    assert proc.returncode == 0, proc.stderr
    return out


class Run:
    """A live run as winclip-inspect wires one (desk, page, loop), in this process, with the test's own sink."""

    def __init__(self, detector, sources, *, profile=None, token=None, drift=None, before_batch=None, out=None):
        specs = parse_sources([str(s) for s in sources], [])
        self.status = LiveStatus([s.name for s in specs])
        self.sink = ListSink()
        self.desk = OperatorDesk(detector, self.status, [self.sink], profile_path=profile, token=token, drift=drift)
        if out is not None:  # the review desk keeps its episodes in the run's output folder, as --out does
            self.desk.open_review(out)
        outputs = LiveOutputs(self.status, None, "none", preview=True)

        def between():
            if before_batch is not None:
                before_batch(self)
            self.desk.between_batches()

        inspection = Inspection(detector, [self.sink], on_event=self.desk.observe(outputs), before_batch=between)
        self.loop = LiveLoop(inspection, specs, self.status, reader_options=FAST)
        self.server = LiveServer(self.status, port=0)
        self.server.desk = self.desk
        self.server.start()
        self.url = self.server.url
        self.result = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.result["reason"] = self.loop.run()
        finally:
            self.loop.close()

    def frames(self):
        return [e for e in self.sink.events if "frame" in e and "error" not in e]

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def finish(self, timeout: float = 60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the loop did not stop"

    def close(self):
        self.loop.stop.set()
        self.thread.join(30)
        self.server.close()
        self.desk.close()


def text_of(driver, css: str) -> str:
    """The text of the first element matching `css` now ("" when none, or when the page redrew it meanwhile)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        found = driver.find_elements("css selector", css)
        return found[0].text if found else ""
    except StaleElementReferenceException:
        return ""


@contextlib.contextmanager
def screenshot_on_failure(driver, name: str):
    """A failed assertion inside saves the page as it was, and its message says where."""
    try:
        yield
    except AssertionError as exc:
        folder = Path(tempfile.mkdtemp(prefix="winclip-page-failure-"))
        path = folder / f"{name}.png"
        driver.save_screenshot(str(path))
        raise AssertionError(f"{exc} (screenshot of the page: {path})") from exc


def shot(driver, name: str) -> Path:
    path = SHOTS / name
    driver.save_screenshot(str(path))
    return path


def test_teach_a_flagged_frame_from_the_page_and_the_next_pass_scores_it_lower(tiny_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By

    profile = calibrate(tiny_bundle, tmp_path)
    detector = Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu", threads=1)
    # one pass of the line: 10 real parts the profile has not seen; the one it scores highest among 40 is in it
    candidates = [read(p) for p in textile_images("nominal", 40, start=400)]
    scores = [r.image_score for r in detector(candidates)]
    top = int(np.argmax(scores))
    one_pass = [candidates[i] for i in range(10) if i != top][:9] + [candidates[top]]
    assert scores[top] >= detector.threshold  # at least that part is flagged (a false alarm: it is a good part)
    video = write_video(tmp_path / "line.avi", one_pass + one_pass)  # the same parts twice: two passes
    decoded = decoded_frames(video)
    # each part is the same pixels on both passes (but the very first frame, where the encoder warms up)
    assert all(np.array_equal(decoded[i], decoded[i + 10]) for i in range(1, 10))

    second_pass = threading.Event()

    def gate(run):  # hold the loop before the second pass until the test lets it go
        if len(run.frames()) == 10:
            assert second_pass.wait(120), "the test never released the second pass"

    run = Run(detector, [video], profile=profile, token=TOKEN, before_batch=gate)
    try:
        assert wait_for(lambda: len(run.frames()) == 10, 60)
        first = run.frames()
        flagged = [e for e in first if e["anomalous"]]
        assert flagged and all(e["profile_version"] == 1 for e in first)

        browser.get(run.url)
        with screenshot_on_failure(browser, "teach-next-pass"):
            assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#gallery .item button.teach"), 15)
            # the page at a glance: engine, profile and version, thresholds; a trend with the threshold; the gallery
            header = browser.find_element(By.ID, "run").text
            assert "engine" in header and f"{profile} · version 1" in header and "image threshold" in header
            assert f"{detector.threshold:.4f}" in header
            assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "svg.trend polyline.threshold"), 10)
            items = browser.find_elements(By.CSS_SELECTOR, "#gallery .item")
            assert len(items) == len(flagged)
            assert "captured " in items[0].find_element(By.CSS_SELECTOR, ".caption").text
            assert wait_for(lambda: browser.find_element(By.CSS_SELECTOR, ".card .caption").text.startswith("captured "), 10)
            shot(browser, "winclip-operator-page-before.png")

            # the frame to teach: the one scored highest on the first pass, found on the page by its gallery id
            target = max(flagged, key=lambda e: e["image_score"])
            gallery = run.get("api/gallery?limit=100")["items"]
            item = next(i for i in gallery if i["frame"] == target["frame"])
            card = browser.find_element(By.CSS_SELECTOR, f'#gallery .item[data-id="{item["id"]}"]')
            assert f"frame {target['frame']}" in card.text and f"{target['image_score']:.4f}" in card.text

            # without the token: refused by the server (beside the button that asked), counted, nothing changes
            card.find_element(By.CSS_SELECTOR, "button.teach").click()
            said = lambda: text_of(browser, f'#gallery .item[data-id="{item["id"]}"] .result')
            assert wait_for(lambda: "refused" in said(), 10)
            assert "operator token" in said()
            assert run.desk.guard.counts()["refused"]["missing"] == 1 and not (profile / "versions.json").exists()

            # with the token: a new version is written; the loop switches to it before the second pass
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.ID, "who").send_keys("anna")
            browser.find_element(By.ID, "who").click()  # the token field's change event fires
            card = browser.find_element(By.CSS_SELECTOR, f'#gallery .item[data-id="{item["id"]}"]')
            card.find_element(By.CSS_SELECTOR, "button.teach").click()
            # the preview, in a dialog; nothing is written until it is confirmed
            assert wait_for(lambda: browser.find_element(By.ID, "dialog").is_displayed(), 30)
            assert "image threshold" in browser.find_element(By.ID, "dialoglines").text
            assert not (profile / "versions.json").exists()
            browser.find_element(By.ID, "dialogyes").click()
            assert wait_for(lambda: run.desk.snapshot()["jobs"] and run.desk.snapshot()["jobs"][0]["state"] == "written", 60)
            second_pass.set()
            run.finish()
            assert wait_for(lambda: "version 2" in browser.find_element(By.ID, "run").text, 15)
            assert wait_for(lambda: "profile version 2 in use" in said(), 15)
            assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'#gallery .item[data-id="{item["id"]}"].taught'), 15)
            assert wait_for(lambda: "ended" in browser.find_element(By.CSS_SELECTOR, ".card .badge").text, 10)
            assert "down" in browser.find_element(By.CSS_SELECTOR, ".card").get_attribute("class")  # greyed out
            shot(browser, "winclip-operator-page-after.png")
            trend_points = run.get("api/trend")["sources"][str(video)]
            assert sum(p[4] for p in trend_points) == 20  # every scored frame is in the trend
    finally:
        second_pass.set()
        run.close()

    frames = run.frames()
    assert [e["frame"] for e in frames] == list(range(20))
    assert [e["profile_version"] for e in frames] == [1] * 10 + [2] * 10  # switched between two frames
    changed = [e for e in run.sink.events if e.get("event") == "profile_changed"]
    assert len(changed) == 1 and (changed[0]["from"], changed[0]["to"], changed[0]["who"]) == (1, 2, "anna")
    assert changed[0]["taught"][0]["frame"] == target["frame"]
    events = run.sink.events
    assert events.index(frames[9]) < events.index(changed[0]) < events.index(frames[10])
    again = frames[target["frame"] + 10]
    assert again["image_score"] < target["image_score"], (target["image_score"], again["image_score"])
    # the new version keeps the original frame (the pixels that were scored, not the overlay)
    versions = json.loads((profile / "versions.json").read_text())
    entry = versions["versions"][-1]
    assert (entry["version"], entry["who"], entry["action"]) == (2, "anna", "teach")
    kept = cv2.imread(str(profile / "v2" / entry["details"]["added"][0]["file"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(kept, decoded[target["frame"]])
    assert run.status.snapshot()["operator"]["access"]["refused"] == {"read-only": 0, "missing": 1, "wrong": 0}

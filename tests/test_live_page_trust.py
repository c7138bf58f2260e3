"""The live page in headless Chromium, where it must be trusted: it never looks live when it is not (a killed run,
a camera that falls silent), a card's picture and numbers are one snapshot, a teach is previewed and confirmed
in a dialog, results stand beside the button that asked, undo gives a frame back, outages are gaps in the trend,
and it is usable at 360 px and at full HD. A failing check saves a screenshot and names it in the message.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import numpy as np

from conftest import read, textile_images
from test_live_cli import FallsSilent, LiveProcess
from test_live_loop import paint_defect, textile_frames, wait_for
from test_operator_page import (TOKEN, Run, browser, calibrate, screenshot_on_failure, shot,  # noqa: F401  (browser)
                                text_of)
from winclip.benchmarks.soak_live import MjpegServer
from winclip.runtime import Detector
from winclip.runtime.line import defaults

SIZES = {"tablet": (360, 800), "full-hd": (1920, 1080)}


def size(driver, kind: str) -> None:
    width, height = SIZES[kind]
    driver.set_window_size(width, height)
    # the window's outer size includes no chrome in headless mode, but say it if it does
    inner = driver.execute_script("return window.innerWidth")
    if inner != width:
        driver.set_window_size(2 * width - inner, height)


def fits_the_width(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def page_url(run: LiveProcess) -> str:
    line = next(line for line in run.stderr_lines if "live page: " in line)
    return line.split("live page: ")[1].strip()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_a_killed_run_and_a_silent_camera_grey_out_and_say_since_when(tiny_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By

    profile = calibrate(tiny_bundle, tmp_path)
    live = MjpegServer(textile_frames(), fps=10).start()
    silent = FallsSilent(textile_frames(), frames=5)  # connected, then nothing: health stays "ok" meanwhile
    events = tmp_path / "events.jsonl"
    run = LiveProcess(str(tiny_bundle), "--profile", str(profile), "--source", live.url, "--source", silent.url,
                      "--serve", "0", "--events", str(events), "--stall-timeout", "120", "--provider", "cpu")
    try:
        assert wait_for(lambda: any("live page: " in line for line in run.stderr_lines), 60), run.stderr_lines
        url = page_url(run)
        size(browser, "full-hd")
        browser.get(url)
        cards = lambda: browser.find_elements(By.CSS_SELECTOR, ".card")  # noqa: E731
        with screenshot_on_failure(browser, "live"):
            assert wait_for(lambda: len(cards()) == 2 and all(c.find_elements(By.CSS_SELECTOR, "img.overlay")
                                                              for c in cards()), 30)
            live_card = browser.find_element(By.CSS_SELECTOR, f'.card[data-source="{live.url}"]')
            assert wait_for(lambda: "score" in live_card.find_element(By.CSS_SELECTOR, ".verdict").text, 10)
            # one snapshot: the picture shown is the overlay the verdict names (its sequence number), and the
            # verdict's frame and score are that frame's event
            shown = browser.execute_script(
                "const c = arguments[0]; return [c.shown.overlay_seq, c.shown.overlay_frame, c.shown.overlay_score, "
                "c.querySelector('img.overlay').getAttribute('src'), c.querySelector('.verdict').textContent]",
                live_card)
            seq, frame, score, src, verdict = shown
            assert src.endswith(f"?seq={seq}") and f"frame {frame}" in verdict and f"{score:.4f}" in verdict
            event = next(e for e in map(json.loads, events.read_text().splitlines())
                         if e.get("source") == live.url and e.get("frame") == frame and "image_score" in e)
            assert f"{event['image_score']:.4f}" in verdict
            assert ("ANOMALOUS" in verdict) == event["anomalous"]
            shot(browser, "winclip-live-full-hd.png")

            # the silent camera: still "ok" by its health, but its newest frame is old by the run's clock
            silent_card = browser.find_element(By.CSS_SELECTOR, f'.card[data-source="{silent.url}"]')
            assert wait_for(lambda: "stale" in silent_card.get_attribute("class"),
                            defaults.PAGE_STALE_FRAME_S + 15)
            assert "no new frame since" in silent_card.find_element(By.CSS_SELECTOR, ".stalemsg").text
            assert not silent_card.find_element(By.CSS_SELECTOR, ".verdict").is_displayed()
            assert "stale" not in live_card.get_attribute("class")
            size(browser, "tablet")
            assert wait_for(lambda: fits_the_width(browser), 5)
            shot(browser, "winclip-live-tablet-silent-camera.png")

            # the run is killed (no goodbye): within two polls every card greys and the page says since when
            last_answer = json.loads(fetch(url + "status.json"))["now"]
            run.proc.send_signal(signal.SIGKILL)
            run.proc.wait(10)
            assert wait_for(lambda: "stale" in browser.find_element(By.TAG_NAME, "body").get_attribute("class"),
                            3 * defaults.PAGE_POLL_S + 2)
            banner = browser.find_element(By.ID, "runstale")
            assert banner.is_displayed() and "run not answering since" in banner.text
            said = re.search(r"since (\d\d):(\d\d):(\d\d)", banner.text)
            assert said, banner.text
            said_s = int(said[1]) * 3600 + int(said[2]) * 60 + int(said[3])
            local = browser.execute_script("const d = new Date(arguments[0] * 1000); "
                                           "return d.getHours() * 3600 + d.getMinutes() * 60 + d.getSeconds()",
                                           last_answer)
            # the run's clock at the page's last answer (a poll before or after the test's own), not the browser's now
            apart = (said_s - local) % 86400
            assert min(apart, 86400 - apart) <= 2 * defaults.PAGE_POLL_S + 1, (banner.text, last_answer)
            time.sleep(3)
            assert re.search(r"since \d\d:\d\d:\d\d", banner.text)[0] == said[0]  # a time that stays put
            for c in cards():
                assert not c.find_element(By.CSS_SELECTOR, ".verdict").is_displayed()
                assert "run not answering since" in c.find_element(By.CSS_SELECTOR, ".stalemsg").text
                assert "grayscale" in browser.execute_script(
                    "return getComputedStyle(arguments[0]).filter", c.find_element(By.CSS_SELECTOR, "img.overlay"))
            assert fits_the_width(browser)
            shot(browser, "winclip-killed-tablet.png")
            size(browser, "full-hd")
            shot(browser, "winclip-killed-full-hd.png")
    finally:
        run.kill()
        live.stop()
        silent.stop()


def test_teach_and_undo_are_confirmed_their_results_stand_beside_their_buttons(tiny_bundle, browser, tmp_path):
    from selenium.webdriver.common.by import By

    profile = calibrate(tiny_bundle, tmp_path)
    detector = Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu", threads=1)
    # a looping camera whose parts have painted defects in their top half, where the overlay's score band may sit
    parts = [read(p) for p in textile_images("nominal", 6, start=300)]
    parts[2] = paint_defect(parts[2])
    parts[4] = paint_defect(parts[4], bright=True)
    camera = MjpegServer(parts, fps=10).start()
    run = Run(detector, [camera.url], profile=profile, token=TOKEN)
    try:
        size(browser, "tablet")
        browser.get(run.url)
        with screenshot_on_failure(browser, "teach-undo"):
            assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#gallery .item button.teach"), 60)
            assert fits_the_width(browser)
            # the capture time is a line of its own under the picture: it never covers the overlay's band
            for pic, caption in (("#sources .card .pic", "#sources .card .caption"),
                                 ("#gallery .item .pic", "#gallery .item .caption")):
                below = browser.execute_script(
                    "const p = document.querySelector(arguments[0]).getBoundingClientRect(), "
                    "c = document.querySelector(arguments[1]).getBoundingClientRect(); return c.top >= p.bottom - 0.5",
                    pic, caption)
                assert below, (pic, caption)
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.ID, "who").send_keys("anna")
            item_id = browser.find_element(By.CSS_SELECTOR, "#gallery .item").get_attribute("data-id")
            item_css = f'#gallery .item[data-id="{item_id}"]'
            browser.find_element(By.CSS_SELECTOR, f"{item_css} button.teach").click()
            assert wait_for(lambda: browser.find_element(By.ID, "dialog").is_displayed(), 30)
            lines = browser.find_element(By.ID, "dialoglines").text
            assert "image threshold" in lines and "of the last" in lines and "held-out normals" in lines
            assert fits_the_width(browser)
            shot(browser, "winclip-teach-preview-tablet.png")
            browser.find_element(By.ID, "dialogno").click()  # cancelled: nothing written, said beside the button
            assert wait_for(lambda: "cancelled" in text_of(browser, f"{item_css} .result"), 5)
            assert not (profile / "versions.json").exists()

            browser.find_element(By.CSS_SELECTOR, f"{item_css} button.teach").click()
            assert wait_for(lambda: browser.find_element(By.ID, "dialog").is_displayed(), 30)
            browser.find_element(By.ID, "dialogyes").click()
            assert wait_for(lambda: "profile version 2 in use" in text_of(browser, f"{item_css} .result"), 60)
            assert wait_for(lambda: "taught: good part in version 2" in text_of(browser, item_css), 10)

            # undo asks first; its result stands beside it; the frame is no longer "taught" and can be taught again
            browser.find_element(By.ID, "undo").click()
            assert wait_for(lambda: browser.find_element(By.ID, "dialog").is_displayed(), 5)
            assert "version 2 in use now" in browser.find_element(By.ID, "dialoglines").text
            browser.find_element(By.ID, "dialogyes").click()
            assert wait_for(lambda: "profile version 1 in use" in text_of(browser, "#undoresult"), 60)
            assert wait_for(lambda: "taught into version 2, undone" in text_of(browser, item_css), 10)
            assert "taught: good part" not in text_of(browser, item_css)
            button = browser.find_element(By.CSS_SELECTOR, f"{item_css} button.teach")
            assert button.is_enabled()
            shot(browser, "winclip-after-undo-tablet.png")
            size(browser, "full-hd")
            assert fits_the_width(browser)
            shot(browser, "winclip-after-undo-full-hd.png")

            # an outage is a gap in the trend: the page's own drawing of buckets with a minute missing
            segments = browser.execute_script(
                "const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg'); const now = 1000; "
                "const pts = []; for (let t = 700; t < 1000; t += 2) if (t < 800 || t > 861) "
                "pts.push([t, .2, .25, .3, 3, 0, .3]); drawTrend(svg, pts, 600, now, 2); "
                "return [svg.querySelectorAll('.mean').length, svg.querySelectorAll('rect.gap').length]")
            assert segments == [2, 1]
    finally:
        run.close()
        camera.stop()

    metrics = run_metrics(run)
    source = camera.url
    assert f'winclip_source_losses_total{{source="{source}"}}' in metrics
    assert re.search(rf'winclip_last_frame_timestamp_seconds{{source="{re.escape(source)}"}} \d', metrics)
    assert re.search(rf'winclip_last_frame_age_seconds{{source="{re.escape(source)}"}} \d', metrics)
    assert re.search(r'winclip_threshold{kind="image"} 0\.\d+', metrics)
    assert re.search(r'winclip_threshold{kind="pixel"} 0\.\d+', metrics)


def run_metrics(run) -> str:
    return run.server.metrics_text().decode()


def test_metrics_say_when_each_source_last_delivered_and_how_often_it_was_lost():
    from winclip.runtime.line.server import LiveServer
    from winclip.runtime.line.status import LiveStatus

    status = LiveStatus(["cam1", "cam2"])
    status.set_health("cam1", "ok", "")
    status.record_event({"source": "cam1", "frame": 0, "time": 1_700_000_000.5, "image_score": 0.3,
                         "anomalous": False, "latency_ms": {"total": 5.0}})
    status.set_health("cam1", "lost", "no frame for 5 s")
    status.set_health("cam1", "ok", "")
    status.set_health("cam1", "reconnecting", "")
    text = LiveServer(status, port=0).metrics_text().decode()
    assert 'winclip_source_losses_total{source="cam1"} 2.0' in text
    assert 'winclip_source_losses_total{source="cam2"} 0.0' in text
    assert 'winclip_last_frame_timestamp_seconds{source="cam1"} 1.7000000005e+09' in text
    age = float(re.search(r'winclip_last_frame_age_seconds\{source="cam1"\} (\S+)', text)[1])
    assert age > 1e7  # that frame was captured in 2023
    assert 'winclip_last_frame_timestamp_seconds{source="cam2"}' not in text  # no frame yet: no made-up time
    assert np.isfinite(age)

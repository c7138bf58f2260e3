"""The review desk (`/review`) in a real browser (headless Chromium through chromedriver), at full HD and 360 px
wide: episodes of a live run on a video of real textile parts with painted defects, refusal without a token,
acknowledge and label through confirmation dialogs with the result beside the button, the full-screen viewer
(heat map / original, zoom), the filters, the history, and "use version K" switching the running loop; named
operators recorded in review.json, the labelled file and the profile's log; reviews and labels in /metrics.
Screenshots of each view are saved (and one of the page as it was when a check failed)."""

from __future__ import annotations

import json
import threading
import urllib.request

import cv2
import numpy as np

from conftest import read, textile_images
from test_live_loop import decoded_frames, paint_defect, wait_for, write_video
from test_operator_page import Run, browser, calibrate, shot, text_of as text  # noqa: F401  (browser is a fixture)
from winclip.runtime import Detector
from winclip.runtime.line import defaults
from winclip.runtime.line.access import load_token
from winclip.runtime.profiles.versions import ProfileStore
from winclip.runtime.profiles.teach import GoodPart, teach

ANNA, BEN = "anna-token-0123456789abcdef", "ben-token-0123456789abcdefgh"
PATTERN = "DDNNNDNDDNNN"  # D: a part with a painted defect, N: a good part


def expected_episodes(frames: list[dict]) -> list[list[int]]:
    """The gap rule, restated: a flagged frame joins the open run of its source after at most
    REVIEW_GAP_FRAMES normal frames (the video plays in well under REVIEW_GAP_S)."""
    episodes, normal = [], None
    for e in frames:
        if not e["anomalous"]:
            normal = None if normal is None else normal + 1
        elif normal is not None and normal <= defaults.REVIEW_GAP_FRAMES:
            episodes[-1].append(e["frame"])
            normal = 0
        else:
            episodes.append([e["frame"]])
            normal = 0
    return episodes


def confirm(driver, yes: bool) -> str:
    """Answer the page's confirmation dialog; what it asked."""
    from selenium.webdriver.common.by import By

    assert wait_for(lambda: driver.find_element(By.ID, "confirm").get_attribute("open") is not None, 10)
    asked = driver.find_element(By.ID, "c-text").text
    driver.find_element(By.ID, "c-yes" if yes else "c-no").click()
    assert wait_for(lambda: driver.find_element(By.ID, "confirm").get_attribute("open") is None, 10)
    return asked


def click(driver, css: str) -> None:
    """Click the element matching `css`, again if the page redrew it between finding and clicking."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked():
        try:
            driver.find_element(By.CSS_SELECTOR, css).click()
            return True
        except StaleElementReferenceException:
            return False

    assert wait_for(clicked, 10), css


def card(driver, episode: int):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'.episode[data-id="{episode}"]')


def fits(driver) -> bool:
    """Nothing on the page is wider than the window (no sideways scrolling)."""
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_the_review_desk_in_a_browser(tiny_bundle, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    profile = calibrate(tiny_bundle, tmp_path)
    detector = Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu", threads=1)
    store = ProfileStore(profile)  # a second version, so there is an earlier one to go back to
    extra = textile_images("nominal", 1, start=500)[0]
    teach(detector, store, [GoodPart(read(extra), extra.name, {})], who="anna", why="a new roll")
    detector = Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu", threads=1)
    goods = [read(p) for p in textile_images("nominal", len(PATTERN), start=420)]
    parts = [paint_defect(g) if kind == "D" else g for g, kind in zip(goods, PATTERN)]
    video = write_video(tmp_path / "line.avi", parts + goods[:1])  # one more frame: the loop waits before it
    decoded = decoded_frames(video)
    tokens_file = tmp_path / "operators"
    tokens_file.write_text(f"anna:{ANNA}\nben:{BEN}\n")
    tokens_file.chmod(0o600)
    out = tmp_path / "out"
    out.mkdir()
    release = threading.Event()

    def gate(run):  # after the pattern, the loop idles (still switching versions) until the test is done
        if len(run.frames()) == len(PATTERN):
            while not release.wait(0.1):
                run.desk.between_batches()

    run = Run(detector, [video], profile=profile, token=load_token(tokens_file), before_batch=gate, out=out)
    try:
        assert wait_for(lambda: len(run.frames()) == len(PATTERN), 90)
        frames = run.frames()
        episodes = expected_episodes(frames)
        assert len(episodes) >= 2, [e["anomalous"] for e in frames]
        listing = json.loads(urllib.request.urlopen(run.url + "api/review", timeout=10).read())
        assert sorted([e["first_frame"], e["last_frame"]] for e in listing["episodes"]) == \
            [[e[0], e[-1]] for e in episodes]

        browser.set_window_size(1920, 1080)
        browser.get(run.url + "review")
        try:
            assert wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".episode")) == len(episodes), 15)
            assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#timeline rect.mark"), 10)
            assert "v1" in text(browser, "#versions") and "(in use)" in text(browser, "#versions tr.current")
            assert "teach" in text(browser, "#history")  # the version taught before the run, from the profile's log
            assert fits(browser)
            shot(browser, "winclip-review-1920.png")
            first = max(e["id"] for e in listing["episodes"])  # newest first: the first card
            second = min(e["id"] for e in listing["episodes"])

            # without a token: the dialog, then a refusal beside the button; counted, nothing written
            click(browser, f'.episode[data-id="{first}"] button.ack')
            assert "Acknowledge episode" in confirm(browser, True)
            assert wait_for(lambda: "refused" in text(browser, f'.episode[data-id="{first}"] .result'), 10)
            assert run.desk.guard.counts()["refused"]["missing"] == 1 and run.desk.guard.counts()["allowed"] == 0
            assert run.desk.review.listing()["verdicts"]["acknowledged"] == 0
            refusal = text(browser, f'.episode[data-id="{first}"] .result')

            # ben's token: cancel changes nothing; confirm acknowledges, in his name, beside the button
            browser.find_element(By.ID, "token").send_keys(BEN)
            browser.find_element(By.ID, "who").click()  # the token field's change event fires
            click(browser, f'.episode[data-id="{first}"] button.ack')
            confirm(browser, False)
            threading.Event().wait(1.0)  # a request the Cancel failed to stop would have arrived by now
            assert run.desk.guard.counts()["allowed"] == 0 and run.desk.review.listing()["verdicts"]["acknowledged"] == 0
            assert text(browser, f'.episode[data-id="{first}"] .result') == refusal  # nothing new beside the button
            click(browser, f'.episode[data-id="{first}"] button.ack')
            confirm(browser, True)
            assert wait_for(lambda: "acknowledged by ben" in text(browser, f'.episode[data-id="{first}"] .result'), 10)
            assert wait_for(lambda: "acknowledged by ben at" in text(browser, f'.episode[data-id="{first}"]'), 10)
            saved = json.loads((out / "review.json").read_text())
            assert [e["review"]["who"] for e in saved["episodes"] if e["review"]] == ["ben"]

            # "this is a defect" on the other episode: its best frame's original pixels into labelled/hole/
            kind = card(browser, second).find_element(By.CSS_SELECTOR, "input.kind")
            kind.clear()
            kind.send_keys("hole")
            click(browser, f'.episode[data-id="{second}"] button.defect')
            assert "labelled/hole/" in confirm(browser, True)
            assert wait_for(lambda: "saved as hole" in text(browser, f'.episode[data-id="{second}"] .result'), 10)
            (written,) = (profile / "labelled" / "hole").glob("*.png")
            best = next(e for e in run.desk.review.listing()["episodes"] if e["id"] == second)["best"]
            assert np.array_equal(cv2.imread(str(written), cv2.IMREAD_UNCHANGED), decoded[best["frame"]])
            assert wait_for(lambda: "labelled hole by ben" in text(browser, f'.episode[data-id="{second}"]'), 10)

            # the viewer: heat map first, then the original at full size, zoomed
            click(browser, f'.episode[data-id="{second}"] .pic')
            assert wait_for(lambda: "open" in browser.find_element(By.ID, "viewer").get_attribute("class"), 5)
            assert "review/picture/" in browser.find_element(By.ID, "v-img").get_attribute("src")
            browser.find_element(By.ID, "v-orig").click()
            width = decoded[0].shape[1]
            assert wait_for(lambda: browser.execute_script("return document.getElementById('v-img').naturalWidth") == width, 10)
            fitted = browser.find_element(By.ID, "v-zoom").text
            browser.find_element(By.ID, "v-in").click()
            zoomed = browser.find_element(By.ID, "v-zoom").text
            assert int(zoomed.rstrip("%")) > int(fitted.rstrip("%"))
            shot(browser, "winclip-review-viewer-1920.png")
            browser.find_element(By.ID, "v-close").click()

            # filters: by verdict
            Select(browser.find_element(By.ID, "f-verdict")).select_by_value("acknowledged")
            assert wait_for(lambda: text(browser, "#matched") == "1 match", 10)
            assert [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, ".episode")] == [str(first)]
            Select(browser.find_element(By.ID, "f-verdict")).select_by_value("")
            assert wait_for(lambda: text(browser, "#matched") == f"{len(episodes)} match", 10)
            # by time, counted back from the run's clock: a tablet 10 h ahead still sees the last 8 h
            browser.execute_script("window.realNow = Date.now; Date.now = () => window.realNow() + 10 * 3600e3;")
            Select(browser.find_element(By.ID, "f-range")).select_by_value("28800")
            threading.Event().wait(1.0)
            assert wait_for(lambda: text(browser, "#matched") == f"{len(episodes)} match", 10)
            browser.execute_script("Date.now = window.realNow;")

            # what people type is shown as text, never run as the page's own markup
            attack = '<img src=x onerror="window.injected=1"><b id="injected">x</b>'
            request = urllib.request.Request(run.url + "api/review/ack", method="POST",
                                             data=json.dumps({"episode": second, "note": attack}).encode(),
                                             headers={"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {ANNA}"})
            assert urllib.request.urlopen(request, timeout=10).status == 200
            assert wait_for(lambda: "onerror" in text(browser, f'.episode[data-id="{second}"]'), 10)
            assert browser.find_elements(By.ID, "injected") == []
            assert len(card(browser, second).find_elements(By.CSS_SELECTOR, "img")) <= 1  # only its picture
            assert browser.execute_script("return window.injected === undefined")

            # any earlier version, through a dialog that says what changes; the loop switches to it
            click(browser, '#versions tr[data-version="1"] button.use')
            asked = confirm(browser, True)
            assert "Use version 1" in asked and "Image threshold" in asked
            assert wait_for(lambda: "version 1 in use" in text(browser, '#versions tr[data-version="1"] .result'), 30)
            changed = [e for e in run.sink.events if e.get("event") == "profile_changed"]
            assert [(e["action"], e["from"], e["to"], e["who"]) for e in changed] == [("use", 2, 1, "ben")]
            assert store.read()["log"][-1]["action"] == "use" and store.read()["current"] == 1
            assert wait_for(lambda: "use" in text(browser, "#history"), 10)

            metrics = urllib.request.urlopen(run.url + "metrics", timeout=10).read().decode()
            assert "winclip_reviews_total 2.0" in metrics and 'winclip_labels_total{kind="hole"} 1.0' in metrics

            # a tablet at the line: 360 px wide, nothing sideways, the buttons still there
            browser.set_window_size(360, 800)
            browser.get(run.url + "review")
            assert wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".episode")) == len(episodes), 15)
            assert browser.execute_script("return window.innerWidth") <= 400
            assert fits(browser)
            assert card(browser, second).find_element(By.CSS_SELECTOR, "button.defect").is_displayed()
            shot(browser, "winclip-review-360.png")
            browser.execute_script("arguments[0].scrollIntoView()", card(browser, second))
            shot(browser, "winclip-review-360-episode.png")
            click(browser, f'.episode[data-id="{second}"] .pic')
            assert wait_for(lambda: "open" in browser.find_element(By.ID, "viewer").get_attribute("class"), 5)
            assert fits(browser)
            shot(browser, "winclip-review-viewer-360.png")
        except BaseException:
            shot(browser, "winclip-review-failed.png")
            raise
    finally:
        release.set()
        run.close()
    # the run's end keeps everything for the next run into the same OUT
    saved = json.loads((out / "review.json").read_text())
    assert {e["id"]: [x["kind"] for x in e["labels"]] for e in saved["episodes"]}[second] == ["hole"]

"""The review desk without a browser: episodes and their gap rule, reviews and labels persisted in OUT/review.json
across a restart, the labelled layout read by winclip-calibrate --labelled and winclip-eval as they are, named
operator tokens (re-read when the file changes), and "use version K" of a profile."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error

import cv2
import numpy as np
import pytest

from conftest import read, run_cli, textile_images
from test_operator_page import calibrate
from winclip.runtime.labelled import LabelError, defect_kind
from winclip.runtime.line.access import OperatorTokens, TokenError, WriteGuard, load_token, parse_tokens
from winclip.runtime.line.frames import Frame
from winclip.runtime.line.review import REVIEW_NAME, ReviewBook, ReviewError
from winclip.runtime.line.status import LiveStatus
from winclip.runtime.profiles.profile import ProfileError
from winclip.runtime.profiles.versions import ProfileStore
from winclip.runtime.profiles.teach import GoodPart, teach

T0 = 1_760_000_000.0
TOKENS = {"anna": "anna-token-0123456789abcdef", "ben": "ben-token-0123456789abcdef"}


def book(out, label_root=None, **kwargs) -> ReviewBook:
    return ReviewBook(out, LiveStatus(["cam1", "cam2"]), label_root=label_root, start_thread=False, **kwargs)


def feed(review: ReviewBook, source: str, index: int, when: float, score: float, flagged: bool, image=None):
    """One scored frame as the desk sees it (the threshold is 0.5 throughout)."""
    image = np.full((8, 8, 3), index % 256, np.uint8) if image is None else image
    event = {"image_score": score, "anomalous": flagged, "threshold": 0.5, "regions": [], "profile_version": 1}
    review.observe(Frame(source, index, when, image), event)


def test_episodes_follow_the_gap_rule_per_source_and_keep_their_best_frame(tmp_path):
    review = book(None, gap_frames=2, gap_s=10.0)
    # cam1: flagged 0-1, one normal frame, flagged 3 (the same part: one episode), best at frame 3
    feed(review, "cam1", 0, T0, 0.6, True)
    feed(review, "cam1", 1, T0 + 0.1, 0.7, True)
    feed(review, "cam2", 0, T0 + 0.1, 0.9, True)  # another source never joins cam1's episode
    feed(review, "cam1", 2, T0 + 0.2, 0.4, False)
    feed(review, "cam1", 3, T0 + 0.3, 0.8, True)
    # three normal frames: the next flagged frame is a new episode
    for i in range(4, 7):
        feed(review, "cam1", i, T0 + 0.1 * i, 0.3, False)
    feed(review, "cam1", 7, T0 + 0.7, 0.55, True)
    # no normal frame between, but 11 s later (the source stopped): a new episode again
    feed(review, "cam1", 8, T0 + 11.8, 0.65, True)
    listing = review.listing(limit=100)
    episodes = sorted(listing["episodes"], key=lambda e: e["id"])
    got = [(e["source"], e["first_frame"], e["last_frame"], e["frames"], e["best"]["frame"]) for e in episodes]
    assert got == [("cam1", 0, 3, 3, 3), ("cam2", 0, 0, 1, 0), ("cam1", 7, 7, 1, 7), ("cam1", 8, 8, 1, 8)]
    assert episodes[0]["best"]["score"] == 0.8 and episodes[0]["end"] == T0 + 0.3
    # these frames were captured long ago: no flagged frame could join any of them now, so none is open
    assert [e["open"] for e in episodes] == [False, False, False, False]
    # filters: by source, by verdict, by time
    assert {e["source"] for e in review.listing(source="cam2")["episodes"]} == {"cam2"}
    assert review.listing(verdict_is="new")["matched"] == 4 and review.listing(verdict_is="acknowledged")["matched"] == 0
    assert [e["first_frame"] for e in review.listing(since=T0 + 5)["episodes"]] == [8]
    assert review.listing(until=T0 + 0.05)["matched"] == 1  # only cam1's first episode had begun by then


def test_an_episode_is_open_only_while_a_flagged_frame_would_still_join_it():
    review = book(None, gap_frames=2, gap_s=10.0)
    now = time.time()
    feed(review, "cam1", 0, now, 0.9, True)
    feed(review, "cam2", 0, now - 30, 0.9, True)  # its source has said nothing since: over the gap in time

    def is_open():
        return {e["source"]: e["open"] for e in review.listing()["episodes"]}

    assert is_open() == {"cam1": True, "cam2": False}
    feed(review, "cam1", 1, now + 0.1, 0.3, False)
    feed(review, "cam1", 2, now + 0.2, 0.3, False)
    assert is_open()["cam1"]  # two normal frames: the next flagged one still joins it
    feed(review, "cam1", 3, now + 0.3, 0.3, False)
    assert not is_open()["cam1"]  # three: it is over, though it is still its source's newest


def test_two_labels_of_one_episode_at_once_write_one_file(tmp_path, monkeypatch):
    import winclip.runtime.line.review as review_module

    review = book(tmp_path / "out", tmp_path / "line3")
    feed(review, "cam1", 0, T0, 0.9, True)
    writing, go_on = threading.Event(), threading.Event()
    encode = review_module.png_bytes

    def slow_png(image):  # the first label stops while its file is being written
        writing.set()
        assert go_on.wait(10)
        return encode(image)

    monkeypatch.setattr(review_module, "png_bytes", slow_png)
    first = threading.Thread(target=lambda: review.label(1, "anna", good=True))
    first.start()
    assert writing.wait(10)
    with pytest.raises(ReviewError, match="being labelled") as second:
        review.label(1, "ben", good=False, kind="scratch")
    assert second.value.status == 409
    go_on.set()
    first.join(10)
    (episode,) = review.listing()["episodes"]
    assert [x["kind"] for x in episode["labels"]] == ["good"]
    assert [p.parent.name for p in (tmp_path / "line3" / "labelled").rglob("*.png")] == ["good"]
    with pytest.raises(ReviewError, match="labelled good already"):
        review.label(1, "ben", good=False, kind="scratch")


def test_a_defect_label_is_never_saved_as_good_and_alike_sources_never_share_a_file(tmp_path):
    review = book(tmp_path / "out", tmp_path / "line3")
    feed(review, "cam 1", 7, T0, 0.9, True)
    feed(review, "cam_1", 7, T0, 0.8, True)  # another source whose name reads the same in a file name
    for kind in ("good", "Good", "reference"):
        with pytest.raises(ReviewError, match="reserved"):
            review.label(1, "anna", good=False, kind=kind)
    assert not (tmp_path / "line3" / "labelled").exists()
    one = review.label(1, "anna", good=False)  # a defect of no named kind
    two = review.label(2, "anna", good=False)
    files = {one["labels"][0]["file"], two["labels"][0]["file"]}
    assert len(files) == 2 and all(f.startswith(str(tmp_path / "line3" / "labelled" / "defect" / "cam_1-f7-"))
                                   for f in files)
    assert len(list((tmp_path / "line3" / "labelled" / "defect").glob("*.png"))) == 2


def test_a_label_read_back_without_its_file_still_refuses_a_second_label(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    first = book(out, tmp_path / "line3")
    feed(first, "cam1", 0, T0, 0.9, True)
    first.close()
    saved = json.loads((out / REVIEW_NAME).read_text())
    saved["episodes"][0]["labels"] = [{"kind": "hole", "who": "anna"}]  # an older or hand-edited file
    (out / REVIEW_NAME).write_text(json.dumps(saved))
    again = book(out, tmp_path / "line3")
    with pytest.raises(ReviewError, match="labelled hole already") as refused:
        again.label(1, "ben", good=True)
    assert refused.value.status == 409


def test_a_review_or_label_is_on_the_disk_before_the_answer_and_a_bad_value_never_stops_the_saves(
        tmp_path, monkeypatch, caplog):
    import winclip.runtime.line.review as review_module

    synced = []
    write = review_module.write_atomic

    def recording(path, data, sync=False):
        synced.append((path.name, sync))
        return write(path, data, sync=sync)

    monkeypatch.setattr(review_module, "write_atomic", recording)
    (tmp_path / "out").mkdir()
    review = book(tmp_path / "out", tmp_path / "line3")
    feed(review, "cam1", 0, T0, 0.9, True)
    feed(review, "cam2", 0, T0, 0.9, True)
    review.acknowledge(1, "anna")
    assert synced == [(REVIEW_NAME, True)]
    review.label(2, "anna", good=True)
    assert synced[-1] == (REVIEW_NAME, True) and synced[-2][1]  # the PNG, then review.json, both synced
    # a value JSON cannot hold (a NaN score) fails that save, in the log, and the next one goes on
    feed(review, "cam1", 5, T0 + 100, float("nan"), True)
    review.save()
    assert "cannot save the review desk" in caplog.text and review._dirty
    review.episodes[3]["best"] = {**review.episodes[3]["best"], "score": 0.95}
    review.save()
    assert [e["id"] for e in json.loads((tmp_path / "out" / REVIEW_NAME).read_text())["episodes"]] == [1, 2, 3]


def test_the_thread_that_saves_outlives_a_failing_save(tmp_path, monkeypatch):
    from winclip.runtime.line import defaults

    monkeypatch.setattr(defaults, "REVIEW_FLUSH_S", 0.0)
    review = ReviewBook(tmp_path, LiveStatus(["cam1"]), start_thread=True)
    tries = []

    def failing(**_):
        tries.append(time.monotonic())
        raise RuntimeError("something no one expected")

    monkeypatch.setattr(review, "save", failing)
    feed(review, "cam1", 0, T0, 0.9, True)
    deadline = time.monotonic() + 10
    while len(tries) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(tries) >= 2 and review._thread.is_alive()
    review._stopping.set()


def test_drift_or_an_outage_still_open_when_the_run_stopped_ended_with_it(tmp_path):
    status = LiveStatus(["cam1"])
    review = ReviewBook(tmp_path, status, start_thread=False)
    status.set_health("cam1", "lost", "no frame for 5 s")  # the camera is lost, then the run is killed
    review.watch_health()
    review.note({"event": "drift", "time": T0, "source": "cam1", "direction": "up", "ks_distance": 0.61})
    review.save()
    saved = json.loads((tmp_path / REVIEW_NAME).read_text())["saved"]
    history = ReviewBook(tmp_path, LiveStatus(["cam1"]), start_thread=False).listing()["history"]
    assert [(o["end"], o["ended_with_run"]) for o in history["outages"]] == [(saved, True)]
    assert [(d["end"], d["ended_with_run"]) for d in history["drift"]] == [(saved, True)]


def test_a_picture_is_offered_only_while_one_is_kept(tmp_path):
    from types import SimpleNamespace

    from winclip.runtime.line.history import Gallery

    gallery = Gallery(pictures=1)
    review = ReviewBook(None, LiveStatus(["cam1"]), gallery=gallery, start_thread=False)
    for i in range(2):
        frame = Frame("cam1", i * 10, T0 + 100 * i, np.zeros((8, 8, 3), np.uint8))
        event = {"image_score": 0.9, "anomalous": True, "threshold": 0.5, "regions": []}
        flagged = gallery.add(frame, SimpleNamespace(image_score=0.9), event, 1, jpeg=b"jpeg %d" % i)
        review.observe(frame, event, flagged)
    pictured = {e["id"]: e["picture"] for e in review.listing()["episodes"]}
    assert pictured == {1: False, 2: True}  # the gallery kept only the newest JPEG
    assert review.picture(1) is None and review.picture(2) == b"jpeg 1"


def test_reviews_and_labels_survive_a_restart_and_a_label_is_the_original_pixels(tmp_path):
    out, profile = tmp_path / "run", tmp_path / "line3"
    out.mkdir(), profile.mkdir()
    first = book(out, profile)
    images = [read(p) for p in textile_images("local", 2)]
    feed(first, "rtsp://cam1/stream", 5, T0, 0.9, True, image=images[0])
    feed(first, "cam2", 9, T0 + 1, 0.8, True, image=images[1])
    one, two = sorted(e["id"] for e in first.listing()["episodes"])
    first.acknowledge(one, "anna", "checked at the line")
    labelled = first.label(two, "ben", good=False, kind="Scratch mark")
    with pytest.raises(ReviewError, match="labelled scratch_mark already"):
        first.label(two, "ben", good=True)
    with pytest.raises(ReviewError, match="reserved"):
        first.label(one, "ben", good=False, kind="masks")
    file = labelled["labels"][0]["file"]
    assert file.startswith(str(profile / "labelled" / "scratch_mark" / "cam2-f9-"))
    assert np.array_equal(cv2.imread(file, cv2.IMREAD_UNCHANGED), images[1])  # lossless: the very pixels scored
    assert first.summary()["reviews"] == 1 and first.summary()["labels"] == {"scratch_mark": 1}
    saved = json.loads((out / REVIEW_NAME).read_text())  # written at once, before the answer
    assert [e["review"]["who"] for e in saved["episodes"] if e["review"]] == ["anna"]

    again = book(out, profile)  # the next run into the same OUT
    episodes = {e["id"]: e for e in again.listing()["episodes"]}
    assert episodes[one]["verdict"] == "acknowledged" and episodes[one]["review"]["note"] == "checked at the line"
    assert episodes[two]["verdict"] == "defect" and episodes[two]["labels"][0]["who"] == "ben"
    assert not episodes[one]["this_run"] and not episodes[one]["original"]
    with pytest.raises(ReviewError, match="no longer kept") as refused:
        again.label(one, "anna", good=True)
    assert refused.value.status == 410
    feed(again, "cam2", 0, T0 + 100, 0.7, True)
    assert max(e["id"] for e in again.listing()["episodes"]) == two + 1  # ids go on, never reused
    again.close()
    # a damaged file is kept aside, and the desk starts empty rather than failing the run
    (out / REVIEW_NAME).write_text("{not json")
    third = book(out, profile)
    assert third.listing()["total"] == 0 and list(out.glob(f"{REVIEW_NAME}.unreadable-*"))


def test_drift_and_outages_are_the_history_and_are_kept(tmp_path):
    status = LiveStatus(["cam1"])
    review = ReviewBook(tmp_path, status, start_thread=False)
    status.set_health("cam1", "ok")
    review.watch_health()
    status.set_health("cam1", "reconnecting", "no frame for 5 s")
    review.watch_health()
    down = status.sources["cam1"].since
    status.set_health("cam1", "lost", "no frame for 5 s")  # still the same outage
    review.watch_health()
    review.note({"event": "drift", "time": T0, "source": "cam1", "direction": "up", "ks_distance": 0.61})
    review.note({"event": "profile_changed", "time": T0 + 1})  # versions come from the profile's own log
    assert review.listing()["history"]["outages"] == [{"source": "cam1", "start": down, "end": None,
                                                       "detail": "no frame for 5 s"}]
    status.set_health("cam1", "ok")
    review.watch_health()
    review.note({"event": "drift_cleared", "time": T0 + 60, "source": "cam1"})
    history = review.listing()["history"]
    assert [(o["start"], o["end"]) for o in history["outages"]] == [(down, status.sources["cam1"].since)]
    assert history["drift"] == [{"source": "cam1", "start": T0, "end": T0 + 60, "direction": "up", "distance": 0.61}]
    assert history["versions"] == []
    review.close()
    again = ReviewBook(tmp_path, LiveStatus(["cam1"]), start_thread=False)
    assert again.listing()["history"]["drift"] == history["drift"]
    assert again.listing()["history"]["outages"] == history["outages"]


def test_a_run_without_a_profile_cannot_label_and_defect_kinds_are_folder_names():
    review = book(None)
    feed(review, "cam1", 0, T0, 0.9, True)
    with pytest.raises(ReviewError, match="--profile"):
        review.label(1, "anna", good=False, kind="scratch")
    assert defect_kind("  Hole In Fabric ") == "hole_in_fabric"
    for bad in ("good", "reference", "../up", "", "x" * 49, "a/b"):
        with pytest.raises(LabelError):
            defect_kind(bad)


def test_the_labelled_folder_the_desk_writes_is_read_by_calibrate_and_eval_as_they_are(tiny_bundle, tmp_path):
    profile = tmp_path / "line3"
    profile.mkdir()
    review = book(tmp_path, profile)
    goods, defects = textile_images("nominal", 6, start=300), textile_images("local", 6)
    for i, path in enumerate(goods + defects):
        feed(review, "cam1", i * 10, T0 + 100 * i, 0.9, True, image=read(path))
    episodes = sorted(e["id"] for e in review.listing()["episodes"])
    assert len(episodes) == 12
    for episode in episodes[:6]:
        review.label(episode, "anna", good=True)
    for episode in episodes[6:]:
        review.label(episode, "anna", good=False, kind="hole")
    labelled = profile / "labelled"
    assert sorted(p.name for p in labelled.iterdir()) == ["good", "hole"]
    assert len(list((labelled / "good").glob("*.png"))) == 6 and len(list((labelled / "hole").glob("*.png"))) == 6

    normals = tmp_path / "normals"
    normals.mkdir()
    for p in textile_images("nominal", 12):
        shutil.copy(p, normals / p.name)
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--normal", str(normals), "--out", str(tmp_path / "p2"),
                   "--object", "bottle", "--shots", "2", "--labelled", str(labelled))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "p2" / "profile.json").read_text())
    assert (record["labelled"]["good"], record["labelled"]["defect"], record["labelled"]["defect_kinds"]) == (6, 6, ["hole"])
    proc = run_cli("winclip-eval", str(tiny_bundle), "--dataset", str(labelled), "--layout", "folder",
                   "--object", "labelled=bottle", "--shots", "0", "--seeds", "1", "--out", str(tmp_path / "eval"),
                   "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval" / "results.json").read_text())
    (category,) = report["categories"]
    assert (category["name"], category["good"], category["defect"]) == ("labelled", 6, 6)
    assert category["runs"][0]["metrics"]["image_auroc"] is not None


def test_token_files_name_operators_and_a_removed_line_stops_its_token(tmp_path):
    path = tmp_path / "operators"
    path.write_text("# the line's operators\nanna:%s\n\nben:%s\n" % (TOKENS["anna"], TOKENS["ben"]))
    path.chmod(0o600)
    tokens = load_token(path)
    guard = WriteGuard(tokens)
    assert tokens.names == ["anna", "ben"]
    assert guard.authorize(f"Bearer {TOKENS['anna']}").name == "anna"
    assert guard.authorize(f"Bearer {TOKENS['ben']}").name == "ben"
    assert guard.authorize("Bearer anna:" + TOKENS["anna"]).refused == "wrong"  # the name is not part of the token
    # ben leaves: his line goes, and his token stops at once, without a restart
    replacement = tmp_path / "operators.new"
    replacement.write_text("anna:%s\n" % TOKENS["anna"])
    os.replace(replacement, path)
    assert guard.authorize(f"Bearer {TOKENS['ben']}").refused == "wrong"
    assert guard.authorize(f"Bearer {TOKENS['anna']}").name == "anna"
    # edited in place (same inode, another size): re-read too
    with open(path, "w") as fh:
        fh.write("carla:%s\n" % ("c" * 20))
    assert guard.authorize(f"Bearer {TOKENS['anna']}").refused == "wrong"
    assert guard.authorize("Bearer " + "c" * 20).name == "carla"
    # a file that becomes unusable lets no one write (and says why in the log), until it is fixed
    path.write_text("carla:short\n")
    assert guard.authorize("Bearer " + "c" * 20).refused == "wrong"
    assert guard.counts()["refused"] == {"read-only": 0, "missing": 0, "wrong": 4}
    assert guard.counts()["allowed"] == 4


def test_a_token_file_change_is_seen_whenever_and_however_it_is_made(tmp_path, monkeypatch):
    import winclip.runtime.line.access as access

    path = tmp_path / "operators"
    path.write_text("anna:%s\nben:%s\n" % (TOKENS["anna"], TOKENS["ben"]))
    tokens = load_token(path)
    # ben's line removed: his name goes from the page's list at once, not at the next write request
    replacement = tmp_path / "operators.new"
    replacement.write_text("anna:%s\n" % TOKENS["anna"])
    os.replace(replacement, path)
    assert tokens.names == ["anna"]
    # edited in place to the same size, its modification time set back: still re-read
    before = path.stat()
    time.sleep(0.05)
    with open(path, "r+") as fh:
        fh.write("anna:%s\n" % TOKENS["anna"].upper())
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert WriteGuard(tokens).authorize("Bearer " + TOKENS["anna"].upper()).name == "anna"
    # changed while the run was reading it at the start: the change is seen at the first request
    read = access._read_token_file

    def read_then_change(p):
        text = read(p)
        p.write_text("carla:%s\n" % ("c" * 20))
        return text

    path.write_text("anna:%s\n" % TOKENS["anna"])
    monkeypatch.setattr(access, "_read_token_file", read_then_change)
    started = load_token(path)
    monkeypatch.setattr(access, "_read_token_file", read)
    assert started.match("c" * 20) == (True, "carla") and started.match(TOKENS["anna"])[0] is False


def test_the_old_single_token_format_and_bad_files(tmp_path, caplog):
    old = tmp_path / "token"
    old.write_text("legacy-token_ABCDEFGHIJKLMNOP\nignored second line\n")
    guard = WriteGuard(load_token(old))
    assert "only line 1 is used" in caplog.text  # the second line is not silently dropped
    # a one-line file that reads as name:token says so: an older token holding ':' would now be its tail
    one = tmp_path / "one"
    one.write_text("Plant:Line3-secret-0123456789\n")
    assert load_token(one).names == ["Plant"] and "read as the token of operator Plant" in caplog.text
    access = guard.authorize("Bearer legacy-token_ABCDEFGHIJKLMNOP")
    assert access.refused is None and access.name is None  # no name: the page's typed name is used
    assert load_token(None, {"WINCLIP_OPERATOR_TOKEN": "dora:" + "d" * 16}).names == ["dora"]
    assert parse_tokens("0123456789:abcdefghijklmnop", "x") == [(None, "0123456789:abcdefghijklmnop")]
    for text, said in [("anna:%s\nben\n" % TOKENS["anna"], "line 2: expected name:token"),
                       ("anna:%s\nAnna:%s\n" % (TOKENS["anna"], TOKENS["ben"]), "given twice"),
                       ("anna:%s\nben:%s\n" % (TOKENS["anna"], TOKENS["anna"]), "share one token"),
                       ("anna:short\n", "at least 16"), ("# nothing\n\n", "no operator token")]:
        with pytest.raises(TokenError, match=said):
            parse_tokens(text, "--operator-token-file f")
    assert isinstance(load_token(old), OperatorTokens) and load_token(None, {}) is None


def test_use_any_earlier_version_is_a_new_change_in_the_log(tiny_bundle, tmp_path):
    from winclip.runtime import Detector

    profile = calibrate(tiny_bundle, tmp_path)
    store = ProfileStore(profile)
    with pytest.raises(ProfileError, match="nothing to choose"):
        store.use(1, "anna")
    detector = Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu", threads=1)
    for i, path in enumerate(textile_images("nominal", 2, start=500)):
        teach(detector, store, [GoodPart(read(path), path.name, {})], who="anna", why=f"part {i}")
    assert store.read()["current"] == 3
    left, chosen = store.use(1, "ben", "back to the calibrated profile")
    assert (left.number, chosen.number, store.read()["current"]) == (3, 1, 1)
    assert store.read()["log"][-1] == {**store.read()["log"][-1], "action": "use", "from": 3, "to": 1, "who": "ben"}
    left, back = store.undo("ben", "not that one")  # undo takes the choice back: to the version left, not a parent
    assert (left.number, back.number, store.read()["current"]) == (1, 3, 3)
    assert store.undo("ben")[1].number == 2  # then, as ever, back to the version the current one was made from
    store.use(1, "ben")
    assert store.use(2, "ben")[1].number == 2  # any kept version, forwards too
    with pytest.raises(ProfileError, match="already in use"):
        store.use(2, "ben")
    with pytest.raises(ProfileError, match="no version 9"):
        store.use(9, "ben")
    assert len(store.read()["versions"]) == 3  # nothing was deleted or added


def test_every_refusal_of_a_review_write_is_a_one_line_answer(tiny_bundle, tmp_path):
    """In-process server, no loop: the errors of "use version K" and of a label each get their JSON answer, and a
    damaged versions.json costs the page its versions only."""
    from test_operator_access import get, post
    from winclip.runtime import Detector
    from winclip.runtime.line.operator import OperatorDesk
    from winclip.runtime.line.server import LiveServer

    profile = calibrate(tiny_bundle, tmp_path)
    detector = Detector.from_bundle(tiny_bundle, profile=profile, provider="cpu", threads=1)
    store = ProfileStore(profile)
    for i, path in enumerate(textile_images("nominal", 2, start=500)):
        teach(detector, store, [GoodPart(read(path), path.name, {})], who="anna", why=f"part {i}")
    status = LiveStatus(["cam1"])
    desk = OperatorDesk(detector, status, [], profile_path=profile, token=TOKENS["anna"])
    desk.open_review(None)
    feed(desk.review, "cam1", 0, T0, 0.9, True)
    server = LiveServer(status, port=0)
    server.desk = desk
    server.start()
    url, anna = server.url, TOKENS["anna"]
    try:
        def use(version):
            return post(url, "api/version", json.dumps({"version": version}).encode(), token=anna)

        assert use(9)[0] == 404 and "no version 9" in use(9)[1]["error"]
        assert use(3)[0] == 409 and "already in use" in use(3)[1]["error"]
        data = json.loads((profile / "versions.json").read_text())
        data["versions"][0]["pruned"] = True
        (profile / "versions.json").write_text(json.dumps(data))
        assert use(1)[0] == 410 and "no longer on disk" in use(1)[1]["error"]
        # a defect of kind "good" is refused, never saved as good
        code, answer = post(url, "api/review/label", json.dumps({"episode": 1, "label": "defect", "kind": "good"})
                            .encode(), token=anna)
        assert code == 400 and "reserved" in answer["error"] and not (profile / "labelled").exists()
        (profile / "versions.json").write_text("{damaged")
        code, answer = use(2)
        assert code == 500 and "versions.json" in answer["error"]
        listing = get(url, "api/review")[0]  # the page still gets its episodes
        assert listing["total"] == 1 and "versions.json" in listing["profile"]["error"]
        code, answer = post(url, "api/review/label", json.dumps({"episode": 1, "label": "defect", "kind": "hole"})
                            .encode(), token=anna)
        assert code == 200 and answer["episode"]["labels"][0]["kind"] == "hole"
    finally:
        server.close()
        desk.close()


def test_winclip_inspect_named_operators_and_the_review_desk_across_a_restart(tiny_bundle, tmp_path):
    """The command itself: --serve with --out and a token file of two operators; a review in ben's name; ben's
    line removed while the run goes on stops his token; SIGTERM saves the desk; the next run into the same OUT
    shows the review again."""
    from test_live_loop import paint_defect, textile_frames, wait_for
    from test_operator_access import get, post, start
    from winclip.benchmarks.soak_live import MjpegServer

    def listed(url):
        try:
            return get(url, "api/review")[0]["episodes"]
        except urllib.error.HTTPError:
            return []

    profile = calibrate(tiny_bundle, tmp_path)
    frames = textile_frames(6)
    stream = MjpegServer([paint_defect(f) if i % 3 == 0 else f for i, f in enumerate(frames)], fps=10).start()
    tokens, out = tmp_path / "operators", tmp_path / "out"
    tokens.write_text(f"anna:{TOKENS['anna']}\nben:{TOKENS['ben']}\n")
    tokens.chmod(0o600)
    args = ("--profile", str(profile), "--out", str(out), "--operator-token-file", str(tokens))
    try:
        run, url = start(tiny_bundle, stream, *args)
        try:
            assert wait_for(lambda: listed(url), 60), run.stderr_lines  # the page may answer before the desk is there
            episode = get(url, "api/review")[0]["episodes"][-1]["id"]
            body = json.dumps({"episode": episode, "who": "someone else", "note": "seen"}).encode()
            code, answer = post(url, "api/review/ack", body, token=TOKENS["ben"])
            assert code == 200 and answer["episode"]["review"]["who"] == "ben"  # the token's name, not the typed one
            tokens.write_text(f"anna:{TOKENS['anna']}\n")  # ben leaves the line; the run goes on
            assert post(url, "api/review/ack", body, token=TOKENS["ben"])[0] == 401
            assert post(url, "api/review/ack", body, token=TOKENS["anna"])[0] == 200
            # a version records the token's name too (a typed name is for unnamed tokens only)
            good = cv2.imencode(".png", frames[1])[1].tobytes()
            code, answer = post(url, "api/teach/preview", good, token=TOKENS["anna"], content_type="image/png")
            assert code == 200, answer
            confirm = json.dumps({"preview": answer["preview"]["id"]}).encode()
            code, answer = post(url, "api/teach", confirm, token=TOKENS["anna"])
            assert code == 202, answer
            assert wait_for(lambda: get(url, "api/profile")[0]["current"] == 2, 60)
            assert get(url, "api/profile")[0]["versions"][0]["who"] == "anna"
            snap = get(url, "status.json")[0]
            assert snap["operator"]["access"]["operators"] == ["anna"] and snap["review"]["reviews"] == 2
            metrics = get(url, "metrics")[0]
            assert "winclip_reviews_total 2.0" in metrics and 'winclip_operator_refused_total{reason="wrong"} 1.0' in metrics
            assert "<title>winclip review desk</title>" in get(url, "review")[0]
            code, _, stderr = run.stop()
        finally:
            run.kill()
        assert code == 0, stderr
        saved = json.loads((out / REVIEW_NAME).read_text())
        assert [e["review"]["who"] for e in saved["episodes"] if e["id"] == episode] == ["anna"]

        again, url = start(tiny_bundle, stream, *args)
        try:
            assert wait_for(lambda: listed(url), 30)
            kept = {e["id"]: e for e in listed(url)}
            assert kept[episode]["verdict"] == "acknowledged" and not kept[episode]["this_run"]
            code, _, stderr = again.stop()
        finally:
            again.kill()
        assert code == 0, stderr
    finally:
        stream.stop()


def test_the_operator_guide_states_the_review_desk_levels_defaults_holds():
    """docs/operator.md repeats the desk's levels for its readers: they must be the ones in force."""
    from pathlib import Path

    from winclip.runtime.line import defaults

    guide = " ".join((Path(__file__).parents[1] / "docs" / "operator.md").read_text().split())
    for said in (f"at most {defaults.REVIEW_GAP_FRAMES} frames of that source",
                 f"captured at most {defaults.REVIEW_GAP_S:g} s after it",
                 f"newest {defaults.REVIEW_ORIGINALS} episodes of the run",
                 f"within {defaults.REVIEW_ORIGINALS_MB:g} MiB",
                 f"within {defaults.REVIEW_FLUSH_S:g} s after new frames",
                 f"At most {defaults.REVIEW_EPISODES:,} episodes and {defaults.REVIEW_HISTORY} drift and "
                 f"{defaults.REVIEW_HISTORY} outage entries",
                 f"episodes newest first (at most {defaults.REVIEW_LISTING})"):
        assert said in guide, said

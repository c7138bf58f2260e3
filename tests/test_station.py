"""`winclip-inspect --station`: the shipped example file run end to end on real peers (an MJPEG camera, video
files, an amqtt broker, a webhook receiver, the live page), its checks one problem per line, a reload while it
runs, a camera that dies while the others go on, and the shared engine's scores equal to each part's own."""

from __future__ import annotations

import json
import re
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, textile_images
from test_live_cli import LiveProcess, error_lines, strict_lines
from test_live_loop import decoded_frames, paint_defect, textile_frames, write_video
from test_nothing_lost import Receiver
from winclip.benchmarks.soak_live import MjpegServer

EXAMPLE = Path(__file__).parents[1] / "docs" / "station.toml"
TOKEN = "station-operator-token-0123456789"


def eventually(condition, timeout: float = 60.0, what: str = "the condition"):
    """condition()'s first truthy value within `timeout` seconds; a failure that says what never came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout:g} s")


def page_url(run) -> str:
    return eventually(lambda: next((line.split("live page: ")[1].strip() for line in run.stderr_lines
                                    if "live page: " in line), None), 120, "the live page")


@pytest.fixture(scope="module")
def profiles(tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """A line profile per object of the tiny bundle, from real good textiles."""
    root = tmp_path_factory.mktemp("station-profiles")
    normal = root / "normal"
    normal.mkdir()
    for path in textile_images("nominal", 16):
        shutil.copy(path, normal / path.name)
    made = {}
    for name in ("bottle", "metal_nut"):
        run_cli("winclip-calibrate", str(tiny_bundle), "--normal", str(normal), "--out", str(root / name),
                "--object", name, "--shots", "4", check=True)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Two recorded cameras: good parts with a painted defect on every third."""
    root = tmp_path_factory.mktemp("station-videos")
    frames = [paint_defect(f) if i % 3 == 0 else f for i, f in enumerate(textile_frames(6))]
    return {"short": write_video(root / "label.avi", frames * 4), "long": write_video(root / "weld.avi", frames * 60)}


def example_for_test(replace: dict[str, str]) -> str:
    """The shipped example with its site-specific values swapped for this test's: each must be in the file
    (so the file keeps the keys the test runs), every other line stays as shipped."""
    text = EXAMPLE.read_text()
    for old, new in replace.items():
        assert old in text, f"the example station no longer has {old!r}"
        text = text.replace(old, new)
    return text


def test_the_example_station_runs_end_to_end(tiny_bundle, profiles, videos, tmp_path):
    """Three cameras (a live MJPEG camera and two recordings), two objects, two profiles and a zero-shot camera,
    on one engine: events, MQTT topics, the webhook and the page per camera; SIGTERM flushes every sink."""
    from test_live_sinks import ThreadedBroker, free_port
    from winclip.runtime import Detector

    label_scores = [Detector.from_bundle(tiny_bundle, profile=profiles["metal_nut"], provider="cpu")(f)[0].image_score
                    for f in decoded_frames(videos["short"])]
    label_threshold = float(np.median(label_scores))  # some label frames flag, some pass
    broker = ThreadedBroker(free_port()).start()
    receiver = Receiver(lambda attempt: 204)  # accepts every POST
    camera = MjpegServer(textile_frames(), fps=20).start()
    (tmp_path / "operators").write_text(f"anna:{TOKEN}\n")
    text = example_for_test({
        '"bottling-bundle"': json.dumps(str(tiny_bundle)),
        '"broker.plant.local:1883"': f'"127.0.0.1:{broker.port}"',
        '"/etc/winclip/operators"': '"operators"',
        "serve = 8080": "serve = 0", '"0.0.0.0"': '"127.0.0.1"',
        '"rtsp://10.0.3.21/stream1"': json.dumps(camera.url), "[320, 80, 640, 640]": "[0, 0, 200, 200]",
        '"bottle cap"': '"bottle"', '"profiles/cap"': json.dumps(str(profiles["bottle"])),
        '"rtsp://10.0.3.22/stream1"': json.dumps(str(videos["short"])), 'object = "label"': 'object = "metal nut"',
        '"profiles/label"': json.dumps(str(profiles["metal_nut"])),
        "threshold = 0.31": f"threshold = {label_threshold!r}",
        '"https://mes.plant.local/hooks/label-anomaly"': json.dumps(receiver.url),
        '"/dev/video0"': json.dumps(str(videos["long"])), '"weld seam"': '"bottle"',
    })
    station = tmp_path / "station.toml"
    station.write_text(text)
    from paho.mqtt import client as mqtt

    by_topic: dict[str, list] = {}
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="station-test")
    subscribed = threading.Event()
    subscriber.on_connect = lambda client, *_: client.subscribe("line3/#", qos=1)
    subscriber.on_subscribe = lambda *_: subscribed.set()
    subscriber.on_message = lambda _c, _u, m: by_topic.setdefault(m.topic, []).append(json.loads(m.payload))
    subscriber.connect("127.0.0.1", broker.port)
    subscriber.loop_start()
    try:
        assert subscribed.wait(10)
        check = run_cli("winclip-inspect", "--station", str(station), "--check")
        assert check.returncode == 0, check.stderr
        for name in ("cap", "label", "weld"):
            assert re.search(rf"^camera {name}: ", check.stdout, re.M), check.stdout
        assert "3 cameras, 3 parts" in check.stdout and camera.sent == 0  # --check opened no camera
        run = LiveProcess("--station", str(station))
        url = page_url(run)
        events_file = tmp_path / "runs" / "line-3" / "events.jsonl"

        def frames_of(name):
            if not events_file.is_file():
                return []
            return [e for e in strict_lines(events_file.read_text()) if e.get("source") == name and "frame" in e]

        eventually(lambda: len(frames_of("label")) == 24 and len(frames_of("cap")) >= 5, timeout=180)
        status = json.loads(urllib.request.urlopen(url + "status.json", timeout=10).read())
        metrics = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
        code, _, stderr = run.stop()
    finally:
        camera.stop()
        receiver.close()
        subscriber.loop_stop()
        subscriber.disconnect()
        broker.close()
    assert code == 0, stderr
    events = strict_lines(events_file.read_text())
    started, stopped = events[0], events[-1]
    assert started["event"] == "run_started" and set(started["cameras"]) == {"cap", "label", "weld"}
    assert {n: c["object"] for n, c in started["cameras"].items()} == {"cap": "bottle", "label": "metal nut",
                                                                       "weld": "bottle"}
    assert started["cameras"]["label"]["threshold"] == label_threshold
    assert started["cameras"]["weld"]["threshold"] == 0.6 and "profile" not in started["cameras"]["weld"]
    frames = {name: [e for e in events if e.get("source") == name and "frame" in e] for name in ("cap", "label",
                                                                                                  "weld")}
    assert [e["frame"] for e in frames["label"]] == list(range(24))
    assert all(e["frame"] % 2 == 0 for e in frames["weld"]) and frames["weld"]  # every = 2
    assert all(e.get("roi") == [0, 0, 200, 200] and e["width"] == 200 for e in frames["cap"])
    assert {e["object"] for e in frames["label"]} == {"metal nut"}
    assert all(e["threshold"] == label_threshold for e in frames["label"])
    # the webhook: exactly label's anomalous frames (its own setting); no other camera posts (none has one)
    flagged = [e["frame"] for e in frames["label"] if e["anomalous"]]
    assert 0 < len(flagged) < 24 and sorted(e["frame"] for e in receiver.accepted if "frame" in e) == flagged
    assert {e.get("source") for e in receiver.accepted if "frame" in e} == {"label"}
    # MQTT: cap's events on its own topic, the others' on the station's
    assert {e["source"] for e in by_topic["line3/winclip/cap"] if "frame" in e} == {"cap"}
    assert {e["source"] for e in by_topic["line3/winclip"] if "frame" in e} == {"label", "weld"}
    assert len([e for e in by_topic["line3/winclip"] if e.get("source") == "label" and "frame" in e]) == 24
    # SIGTERM: every sink delivered everything it held
    assert stopped["event"] == "run_stopped" and stopped["reason"] == "SIGTERM"
    assert all(s["queued"] == 0 and s["failed"] == 0 and s["dropped"] == 0 for s in stopped["sinks"].values())
    assert by_topic["line3/winclip"][-1]["event"] == "run_stopped"
    # the page and /metrics, per camera
    assert set(status["sources"]) == {"cap", "label", "weld"}
    for name in ("cap", "label", "weld"):
        assert re.search(rf'winclip_frames_scored_total{{source="{name}"}} [1-9]', metrics), metrics[:2000]


def write_station(tmp_path: Path, bundle: Path, cameras: str, extra: str = "",
                  engine: str = 'backend = "onnxruntime"') -> Path:
    path = tmp_path / "station.toml"
    path.write_text(f'bundle = {json.dumps(str(bundle))}\n[engine]\n{engine}\n'
                    f'[outputs]\nout = {json.dumps(str(tmp_path / "out"))}\n{extra}\n{cameras}')
    return path


def camera(name: str, source: Path | str, **keys) -> str:
    lines = ["[[camera]]", f"name = {json.dumps(name)}", f"source = {json.dumps(str(source))}"]
    lines += [f"{k} = {json.dumps(str(v)) if isinstance(v, Path) else json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def other_profile(tmp_path_factory, profiles) -> Path:
    """The bottle profile as if made for another bundle: its engine's fingerprint is not this bundle's."""
    copy = tmp_path_factory.mktemp("other") / "profile"
    shutil.copytree(profiles["bottle"], copy)
    for path in copy.rglob("*.json"):
        text = path.read_text()
        sha = json.loads(json.dumps(re.findall(r'"graph_sha256": "([0-9a-f]{64})"', text)))
        for found in set(sha):
            text = text.replace(found, "0" * 64)
        path.write_text(text)
    return copy


@pytest.mark.parametrize("case, expected", [
    ("unknown_key", r"camera 'a': unknown key 'treshold' \(did you mean 'threshold'\?\)"),
    ("unknown_table", r"unknown key 'output' \(did you mean 'outputs'\?\)"),
    ("wrong_type", r"camera 'a': every: expected a whole number, got str '2'"),
    ("out_of_range", r"camera 'a': threshold: .*1\.5"),
    ("duplicate", r"camera 'a': duplicate camera name \(camera #1 has it too\)"),
    ("missing_source_file", r"camera 'b': source not found: .*nowhere\.avi"),
    ("other_bundle", r"camera 'a': profile .* was made for another bundle"),
    ("unknown_object", r"camera 'a': object 'pretzel' is not in the bundle"),
    ("topic_without_broker", r"camera 'a': mqtt_topic needs a broker"),
    ("bad_webhook", r"camera 'a': webhook: "),
    ("source_list", r"camera 'a': source: expected one camera index, .* got list"),
    ("served_with_local_options", r"\[engine\] threads applies to an engine run here, not to \[engine\] server"),
])
def test_each_problem_of_a_station_file_is_one_line_and_nothing_starts(tiny_bundle, profiles, other_profile, videos,
                                                                       tmp_path, case, expected):
    video = videos["short"]
    cameras = {
        "unknown_key": camera("a", video, object="bottle", treshold=0.5),
        "unknown_table": camera("a", video, object="bottle"),
        "wrong_type": camera("a", video, object="bottle", every="2"),
        "out_of_range": camera("a", video, object="bottle", threshold=1.5),
        "duplicate": camera("a", video, object="bottle") + camera("a", video, object="bottle"),
        "missing_source_file": camera("a", video, object="bottle") + camera("b", tmp_path / "nowhere.avi"),
        "other_bundle": camera("a", video, profile=other_profile),
        "unknown_object": camera("a", video, object="pretzel"),
        "topic_without_broker": camera("a", video, object="bottle", mqtt_topic="t"),
        "bad_webhook": camera("a", video, object="bottle", webhook="ftp://example.com/x"),
        "source_list": camera("a", video, object="bottle").replace(f"source = {json.dumps(str(video))}",
                                                                   f"source = [{json.dumps(str(video))}, \"0\"]"),
        "served_with_local_options": camera("a", video, object="bottle"),
    }[case]
    extra = "[output]\nout = 'x'\n" if case == "unknown_table" else ""
    served = "server = 'triton://127.0.0.1:8001/winclip'\nthreads = 2"
    path = write_station(tmp_path, tiny_bundle, cameras, extra=extra,
                         **({"engine": served} if case == "served_with_local_options" else {}))
    for args in (("--check",), ()):
        proc = run_cli("winclip-inspect", "--station", str(path), *args)
        errors = error_lines(proc.stderr)
        assert proc.returncode == 1 and len(errors) == 1, proc.stderr
        assert re.search(expected, errors[0]), errors[0]
        assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()  # nothing started


def test_several_problems_are_each_their_own_line(tiny_bundle, videos, tmp_path):
    cameras = (camera("a", videos["short"], object="bottle", shots=0) + camera("a", videos["short"], every=-1) +
               camera("c", videos["short"], object="bottle", colour="red"))
    proc = run_cli("winclip-inspect", "--station", str(write_station(tmp_path, tiny_bundle, cameras)), "--check")
    errors = error_lines(proc.stderr)
    assert proc.returncode == 1 and len(errors) == 4, proc.stderr
    assert all(line.startswith(f"Error: {tmp_path / 'station.toml'}: camera ") for line in errors)


def test_a_file_that_is_not_text_is_one_line(tmp_path):
    path = tmp_path / "station.toml"
    path.write_bytes(b"bundle = \"\xff\xfe\"\n")
    proc = run_cli("winclip-inspect", "--station", str(path), "--check")
    assert proc.returncode == 1 and error_lines(proc.stderr) == [f"Error: {path}: not valid TOML: not UTF-8 text"]


def test_an_roi_that_misses_one_camera_is_its_error_events_and_a_source_file_is_found_beside_the_station(
        tiny_bundle, videos, tmp_path):
    shutil.copy(videos["short"], tmp_path / "label.avi")
    cameras = (camera("cropped", videos["short"], object="bottle", threshold=0.5, roi=[0, 0, 9999, 9999]) +
               camera("whole", "label.avi", object="bottle", threshold=0.5))  # relative: beside the station file
    proc = run_cli("winclip-inspect", "--station", str(write_station(tmp_path, tiny_bundle, cameras)))
    assert proc.returncode == 0, proc.stderr
    events = strict_lines((tmp_path / "out" / "events.jsonl").read_text())
    cropped = [e for e in events if e.get("source") == "cropped" and "frame" in e]
    whole = [e for e in events if e.get("source") == "whole" and "frame" in e]
    assert len(cropped) == 24 and all("does not fit" in e["error"] for e in cropped)
    assert len(whole) == 24 and all("error" not in e for e in whole)


def test_a_station_takes_nothing_else_from_the_command_line(tiny_bundle, videos, tmp_path):
    path = write_station(tmp_path, tiny_bundle, camera("a", videos["short"], object="bottle"))
    for args, words in [((str(tiny_bundle), "--station", str(path)), "BUNDLE: with --station the file says it"),
                        (("--station", str(path), "--threshold", "0.5"), "--threshold: with --station"),
                        ((str(tiny_bundle), "--source", str(videos["short"]), "--check"), "--check checks a station")]:
        proc = run_cli("winclip-inspect", *args)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr


def test_a_reload_changes_cameras_and_thresholds_between_two_frames_and_refuses_a_bad_file(tiny_bundle, profiles,
                                                                                            videos, tmp_path):
    (tmp_path / "operators").write_text(f"anna:{TOKEN}\n")
    page = f'[page]\nserve = 0\noperator_token_file = {json.dumps(str(tmp_path / "operators"))}\n'
    first = (camera("label", videos["long"], profile=profiles["metal_nut"], threshold=0.99) +
             camera("weld", videos["long"], object="bottle", threshold=0.5))
    path = write_station(tmp_path, tiny_bundle, first, page)
    run = LiveProcess("--station", str(path))
    events_file = tmp_path / "out" / "events.jsonl"

    def events():
        return strict_lines(events_file.read_text()) if events_file.is_file() else []

    try:
        url = page_url(run)
        eventually(lambda: len([e for e in events() if e.get("source") == "weld"]) >= 3, timeout=60)
        path.write_text(path.read_text().replace("threshold = 0.99", "threshold = 0.01")
                        .replace('name = "weld"', 'name = "cap"') + 'webhook = "http://127.0.0.1:9/hook"\n')
        run.proc.send_signal(signal.SIGHUP)
        eventually(lambda: any(e.get("event") == "reloaded" for e in events()), timeout=30)
        eventually(lambda: len([e for e in events() if e.get("source") == "cap" and "frame" in e]) >= 3, timeout=60)
        good = path.read_text()
        path.write_text(good + "\n[[camera]]\nname = 7\n")
        run.proc.send_signal(signal.SIGHUP)
        eventually(lambda: any(e.get("event") == "reload_refused" for e in events()), timeout=30)
        path.write_text(good.replace("threshold = 0.5", "threshold = 0.6"))
        request = urllib.request.Request(url + "api/station/reload", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401
        request.add_header("Authorization", f"Bearer {TOKEN}")
        assert urllib.request.urlopen(request, timeout=10).status == 202
        eventually(lambda: len([e for e in events() if e.get("event") == "reloaded"]) == 2, timeout=30)
        eventually(lambda: any(e.get("source") == "cap" and e.get("threshold") == 0.6 for e in events()), timeout=60)
        code, _, stderr = run.stop()
    finally:
        run.kill()
    assert code == 0, stderr
    seen = events()
    reloads = [e for e in seen if e.get("event") in ("reloaded", "reload_refused")]
    assert [e["event"] for e in reloads] == ["reloaded", "reload_refused", "reloaded"]
    assert reloads[0]["added"] == ["cap"] and reloads[0]["removed"] == ["weld"] and reloads[0]["changed"] == ["label"]
    # cap's own webhook opened; the station's events file stayed open (it only stopped taking nothing new)
    assert reloads[0]["sinks_opened"] == ["webhook http://127.0.0.1:9/hook (cap)"] and "sinks_closed" not in reloads[0]
    assert "name: expected a name" in reloads[1]["reason"]
    assert reloads[2]["changed"] == ["cap"] and not reloads[2]["added"] and not reloads[2]["removed"]
    at = seen.index(reloads[0])
    label = [e for e in seen if e.get("source") == "label" and "frame" in e]
    before, after = [e for e in label if seen.index(e) < at], [e for e in label if seen.index(e) > at]
    assert before and after and {e["threshold"] for e in before} == {0.99} and {e["threshold"] for e in after} == {0.01}
    assert not [e for e in seen[at:] if e.get("source") == "weld" and "frame" in e]  # removed: no frame after
    assert "reload refused" in stderr and stderr.count("Traceback") == 0


def test_a_camera_that_dies_never_stalls_the_others(tiny_bundle, videos, tmp_path):
    stream = MjpegServer(textile_frames(), fps=20).start()
    cameras = (camera("live", stream.url, object="bottle", threshold=0.5) +
               camera("label", videos["long"], object="metal nut", threshold=0.5, every=3) +
               camera("weld", videos["long"], object="bottle", threshold=0.5, every=3))
    path = write_station(tmp_path, tiny_bundle, cameras, "[run]\nstall_timeout = 1\n")
    run = LiveProcess("--station", str(path))
    events_file = tmp_path / "out" / "events.jsonl"

    def events():
        return strict_lines(events_file.read_text()) if events_file.is_file() else []

    try:
        eventually(lambda: len([e for e in events() if e.get("source") == "live" and "frame" in e]) >= 3, timeout=120)
        stream.stop()
        eventually(lambda: any(e.get("event") in ("source_lost", "source_reconnecting") and e["source"] == "live"
                             for e in events()), timeout=30)
        lost_at = len(events())
        eventually(lambda: len([e for e in events()[lost_at:] if e.get("source") == "weld"]) >= 10, timeout=60)
        code, _, stderr = run.stop()
    finally:
        run.kill()
        stream.stop()
    assert code == 0, stderr
    after = events()[lost_at:]
    assert len([e for e in after if e.get("source") == "label" and "frame" in e]) >= 10
    assert not [e for e in after if e.get("source") == "live" and "frame" in e and "error" not in e]


def test_one_engine_scores_every_part_as_its_own_detector_would(tiny_bundle, profiles):
    """Frames of three parts in one batch through one session (one call, or a frame a call as a live run on a
    CPU does), each frame's score and map equal to what its part's detector alone gives (the text, memory and
    thresholds are the part's, the embedding is shared)."""
    from types import SimpleNamespace

    from winclip.runtime import Detector
    from winclip.runtime.line.inspection import EngineScoring

    engine = Detector.from_bundle(tiny_bundle, profile=profiles["bottle"], provider="cpu")
    parts = {"cap": engine.sharing_engine(profile=profiles["bottle"]),
             "label": engine.sharing_engine(profile=profiles["metal_nut"], threshold=0.3),
             "weld": engine.sharing_engine("bottle", threshold=0.6)}
    alone = {"cap": Detector.from_bundle(tiny_bundle, profile=profiles["bottle"], provider="cpu"),
             "label": Detector.from_bundle(tiny_bundle, profile=profiles["metal_nut"], provider="cpu", threshold=0.3),
             "weld": Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu", threshold=0.6)}
    images = textile_frames(6)
    frames = [SimpleNamespace(source=name, image=image) for name, image in zip(["cap", "label", "weld"] * 2, images)]
    calls = []
    run = engine.backend.run
    engine.backend.run = lambda batch: calls.append(len(batch)) or run(batch)
    assert engine.backend.live_batch == 1  # on a CPU: a frame per call (a batch is no faster and holds more)
    for max_batch, expected in [(None, [6]), (engine.backend.live_batch, [1] * 6), (4, [4, 2])]:
        calls.clear()
        results = EngineScoring(engine, lambda frame: parts[frame.source], max_batch=max_batch)(frames)
        assert calls == expected
        for frame, result in zip(frames, results):
            own = alone[frame.source](frame.image)[0]
            assert abs(result.image_score - own.image_score) < 1e-6
            assert np.abs(result.anomaly_map - own.anomaly_map).max() < 1e-6
            assert result.threshold == own.threshold and result.anomalous == own.anomalous


def test_a_profile_of_another_engine_cannot_share_the_session(tiny_bundle, other_profile):
    from winclip.runtime import Detector
    from winclip.runtime.profiles.profile import ProfileError

    engine = Detector.from_bundle(tiny_bundle, object="bottle", provider="cpu")
    with pytest.raises(ProfileError, match="which this bundle does not have"):
        engine.sharing_engine(profile=other_profile)


def test_the_event_fanout_is_ordered_counted_and_routes_by_camera():
    from winclip.runtime.line.fanout import EventFanout

    class Sink:
        def __init__(self):
            self.events = []

        def write(self, event):
            self.events.append(event)

    everything, cap_only, not_cap = Sink(), Sink(), Sink()
    fanout = EventFanout([everything])
    fanout.add(cap_only, only=["cap"])
    fanout.add(not_cap, besides=["cap"])
    sent = [{"event": "run_started"}, {"source": "cap", "frame": 0}, {"source": "weld", "frame": 0},
            {"event": "source_lost", "source": "cap"}, {"event": "run_stopped"}]
    threads = [threading.Thread(target=fanout.write, args=(e,)) for e in sent[1:4]]
    fanout.write(sent[0])
    for t in threads:
        t.start()
        t.join()
    fanout.write(sent[4])
    assert everything.events == sent
    assert cap_only.events == [sent[0], sent[1], sent[3], sent[4]]
    assert not_cap.events == [sent[0], sent[2], sent[4]]
    assert fanout.counts == {"run_started": 1, "frame": 2, "source_lost": 1, "run_stopped": 1} and fanout.written == 5

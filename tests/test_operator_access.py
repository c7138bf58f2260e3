"""Write access to the live page, through `winclip-inspect --serve` as a process on a live MJPEG stream of real parts:
read-only without a token; with one (a file or the environment, never the command line) every write needs it,
wrong and missing tokens are refused and counted; posted frames are bounded in bytes and decoded under the pixel
cap; two teach requests at once become two versions, none lost; undo goes back; every change is an event."""

from __future__ import annotations

import http.client
import json
import os
import re
import struct
import threading
import urllib.error
import urllib.parse
import urllib.request

import cv2
import pytest

from conftest import read, run_cli, textile_images
from test_live_cli import LiveProcess, strict_lines
from test_live_loop import textile_frames, wait_for
from test_operator_page import calibrate
from winclip.benchmarks.soak_live import MjpegServer

TOKEN = "a-long-enough-operator-token-42"


@pytest.fixture(scope="module")
def profile_template(tiny_bundle, tmp_path_factory):
    return calibrate(tiny_bundle, tmp_path_factory.mktemp("access"))


@pytest.fixture
def profile(profile_template, tmp_path):
    import shutil

    return shutil.copytree(profile_template, tmp_path / "line3")


@pytest.fixture
def stream():
    server = MjpegServer(textile_frames(6), fps=10).start()
    yield server
    server.stop()


def start(tiny_bundle, stream, *args, env=None) -> tuple[LiveProcess, str]:
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        run = LiveProcess(str(tiny_bundle), "--source", stream.url, "--serve", "0", "--provider", "cpu", *args)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert wait_for(lambda: any("live page: " in line for line in run.stderr_lines), 60), run.stderr_lines
    url = next(line for line in run.stderr_lines if "live page: " in line).split("live page: ")[1].strip()
    return run, url


def post(url: str, path: str, body: bytes = b"{}", token: str | None = None, content_type="application/json"):
    request = urllib.request.Request(url + path, data=body, method="POST", headers={"Content-Type": content_type})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str, path: str):
    with urllib.request.urlopen(url + path, timeout=10) as response:
        body = response.read()
        return (json.loads(body) if path.endswith(".json") or path.startswith("api/") else body.decode()), response


def png(image) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_token_options_are_checked_before_anything_starts(tiny_bundle, tmp_path, stream):
    short = tmp_path / "short"
    short.write_text("too-short\n")
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", stream.url, "--serve", "0",
                   "--operator-token-file", str(short))
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("Error: the operator token in")
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", stream.url, "--serve", "0",
                   "--operator-token-file", str(tmp_path / "missing"))
    assert proc.returncode == 1 and "cannot read --operator-token-file" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", stream.url, "--out", str(tmp_path / "o"),
                   "--operator-token-file", str(short))
    assert proc.returncode == 2 and "--operator-token-file needs --serve PORT" in proc.stderr
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", stream.url, "--serve", "0", "--operator-token",
                   TOKEN)
    assert proc.returncode == 2 and "No such option" in proc.stderr  # never on the command line


def test_a_page_without_a_token_is_read_only(tiny_bundle, stream, profile):
    run, url = start(tiny_bundle, stream, "--profile", str(profile))
    try:
        assert url.startswith("http://127.0.0.1:")  # still bound to this machine unless told otherwise
        assert wait_for(lambda: get(url, "status.json")[0]["scored"] >= 2, 30)
        code, answer = post(url, "api/undo", token=TOKEN)
        assert code == 403 and answer["refused"] == "read-only" and "operator token" in answer["error"]
        snap = get(url, "status.json")[0]["operator"]
        assert snap["access"] == {"writable": False, "allowed": 0, "refused": {"read-only": 1, "missing": 0, "wrong": 0},
                                  "operators": []}
        page, response = get(url, "")
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert "<script" in page and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(""", page)
        code, _, stderr = run.stop()
    finally:
        run.kill()
    assert code == 0, stderr
    assert not (profile / "versions.json").exists()


def test_writes_need_the_token_and_two_teach_requests_at_once_are_two_versions(tiny_bundle, stream, profile, tmp_path):
    events = tmp_path / "events.jsonl"
    run, url = start(tiny_bundle, stream, "--profile", str(profile), "--events", str(events),
                     env={"WINCLIP_OPERATOR_TOKEN": TOKEN})
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    try:
        assert wait_for(lambda: get(url, "status.json")[0]["scored"] >= 2, 30)
        assert post(url, "api/undo")[0] == 401
        assert post(url, "api/undo", token=TOKEN[:-1] + "x")[0] == 401
        assert post(url, "api/teach", png(read(textile_images("nominal", 1, start=500)[0])), token="short",
                    content_type="image/png")[0] == 401
        metrics = get(url, "metrics")[0]
        assert 'winclip_operator_refused_total{reason="missing"} 1.0' in metrics
        assert 'winclip_operator_refused_total{reason="wrong"} 2.0' in metrics

        # bounded bodies: a claimed 100 MB is refused before a byte of it is read; a 20000 x 20000 PNG header
        # (a few bytes) is refused by the pixel cap before anything is decoded
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.putrequest("POST", "/api/teach")
        for name, value in (("Authorization", f"Bearer {TOKEN}"), ("Content-Type", "image/png"),
                            ("Content-Length", str(100 << 20))):
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and "at most" in json.loads(response.read())["error"]
        conn.close()
        bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
        code, answer = post(url, "api/teach/preview", bomb + bytes(64), token=TOKEN, content_type="image/png")
        assert code == 413 and "more than the" in answer["error"], answer
        code, answer = post(url, "api/teach/preview", b"not an image at all", token=TOKEN, content_type="image/jpeg")
        assert code == 400 and "cannot decode" in answer["error"]
        assert post(url, "api/teach/preview", b'{"item": 999999}', token=TOKEN)[0] == 404
        # a teach is confirmed by its preview, never sent blind
        code, answer = post(url, "api/teach", png(read(textile_images("nominal", 1, start=500)[0])), token=TOKEN,
                            content_type="image/png")
        assert code == 428 and "/api/teach/preview" in answer["error"]

        # two good parts previewed and confirmed at the same moment: the first is written, the second's preview
        # is no longer current (the profile changed under it) and it says so; previewed again, it is written too
        images = [png(read(p)) for p in textile_images("nominal", 2, start=500)]
        previews = [post(url, "api/teach/preview", body, token=TOKEN, content_type="image/png") for body in images]
        assert [code for code, _ in previews] == [200, 200], previews
        assert all(p["preview"]["base_version"] == 1 and p["preview"]["words"] for _, p in previews)
        answers, barrier = [], threading.Barrier(2)

        def confirm(preview):
            barrier.wait()
            answers.append(post(url, "api/teach", json.dumps({"preview": preview["id"]}).encode(), token=TOKEN))

        threads = [threading.Thread(target=confirm, args=(p["preview"],)) for _, p in previews]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)

        def changes():
            return [e for e in strict_lines(events.read_text()) if e.get("event") == "profile_changed"]

        def jobs():
            return get(url, "status.json")[0]["operator"]["jobs"]

        assert wait_for(lambda: len(changes()) == 1, 60), run.stderr_lines
        assert wait_for(lambda: not any(j["state"] in ("queued", "running") for j in jobs()), 30)
        stale = [a for code, a in answers if code != 202] + [j for j in jobs() if j["state"] == "failed"]
        assert len(stale) == 1 and "changed since" in (stale[0].get("error") or stale[0].get("detail")), answers
        code, again = post(url, "api/teach/preview", images[1], token=TOKEN, content_type="image/png")
        assert code == 200 and again["preview"]["base_version"] == 2
        code, _ = post(url, "api/teach", json.dumps({"preview": again["preview"]["id"]}).encode(), token=TOKEN)
        assert code == 202
        assert wait_for(lambda: len(changes()) == 2, 60), run.stderr_lines
        assert get(url, "api/profile")[0]["current"] == 3
        code, answer = post(url, "api/undo", b'{"who": "anna", "why": "the second roll was bad"}', token=TOKEN)
        assert code == 202 and answer["job"]["action"] == "undo"
        assert wait_for(lambda: len(changes()) == 3, 60)
        assert get(url, "status.json")[0]["operator"]["version"] == 2
        assert 'winclip_profile_version 2.0' in get(url, "metrics")[0]
        code, _, stderr = run.stop()
    finally:
        run.kill()
    assert code == 0, stderr
    lines = strict_lines(events.read_text())
    assert lines[0]["event"] == "run_started" and lines[0]["profile_version"] == 1
    first, second, undo = changes()
    assert [(c["from"], c["to"], c["action"]) for c in (first, second, undo)] == [(1, 2, "teach"), (2, 3, "teach"),
                                                                                (3, 2, "undo")]
    assert undo["who"] == "anna" and undo["why"] == "the second roll was bad"
    frames = [e for e in lines if "frame" in e and "error" not in e]
    at = [lines.index(e) for e in (first, second, undo)]
    versions_seen = [(lines.index(e), e["profile_version"]) for e in frames]
    assert all(v == 1 for i, v in versions_seen if i < at[0]) and all(v == 2 for i, v in versions_seen if at[0] < i < at[1])
    assert all(v == 3 for i, v in versions_seen if at[1] < i < at[2]) and all(v == 2 for i, v in versions_seen if i > at[2])
    versions = json.loads((profile / "versions.json").read_text())
    assert versions["current"] == 2 and [v["parent"] for v in versions["versions"]] == [None, 1, 2]
    assert [len(v["details"]["added"]) for v in versions["versions"][1:]] == [1, 1]

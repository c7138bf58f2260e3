"""Engines served through a real Triton Inference Server (winclip-serve, PyTriton) on 127.0.0.1, edge clients
scoring locally: the same scores as a local run, four clients at once batched together, a server killed and
restarted under a live run, a server of another bundle refused, and the Triton model repository for NVIDIA's
own images checked field by field against the graph.

The server runs in its own interpreter when WINCLIP_SERVE_PYTHON names one (nvidia-pytriton pins numpy<2, so CI
gives it a venv of its own, see .ci/run), else in this one if it has PyTriton. Without either the server tests
are skipped here and fail under CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import (SCRIPTS, TINY, TINY_CONFIG, elpv_images, import_blocker, make_model, read, run_cli, save_checkpoint,
                      textile_images)
from test_live_cli import strict_lines
from test_live_loop import decoded_frames, textile_frames, wait_for, write_video
from winclip.runtime.errors import BundleError
from winclip.runtime.served import AddressError, ServedAddress, served_version
from winclip.serve import defaults
from winclip.serve.process import SERVE_PYTHON_VARIABLE, ServeProcess, free_ports, serve_python

TOLERANCE = 1e-6


def _needs(what: str, why: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the serving tests: {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def server_python() -> str:
    python = serve_python()
    if python is None:
        _needs("pytriton", f"no interpreter with nvidia-pytriton: pip install \".[cpu,serve]\" or set "
                           f"{SERVE_PYTHON_VARIABLE}")
    return python


@pytest.fixture(scope="module", autouse=True)
def client_library():
    try:
        import tritonclient.grpc  # noqa: F401
    except ImportError:
        _needs("tritonclient", 'tritonclient is not installed: pip install ".[triton-client]"')


@pytest.fixture(scope="module")
def served(server_python, tiny_bundle, tmp_path_factory):
    """winclip-serve on the tiny bundle for the module's tests."""
    server = ServeProcess(server_python, tiny_bundle, tmp_path_factory.mktemp("serve-main"))
    server.start()
    yield server
    server.close()


def frames_of(paths) -> list[np.ndarray]:
    return [read(p) for p in paths]


def local_detector(bundle, **kwargs):
    from winclip.runtime.detector import Detector

    return Detector.from_bundle(bundle, object="bottle", **kwargs)


def assert_same_results(local, remote):
    assert len(local) == len(remote)
    for a, b in zip(local, remote):
        assert abs(a.image_score - b.image_score) <= TOLERANCE
        assert a.anomaly_map.shape == b.anomaly_map.shape
        assert float(np.abs(a.anomaly_map - b.anomaly_map).max()) <= TOLERANCE
        assert a.anomalous == b.anomalous


# ---- the address and the version rule (no server needed)
def test_addresses_and_versions():
    assert ServedAddress.parse("triton://10.0.0.5:9001/line-3") == ServedAddress("10.0.0.5", 9001, "line-3")
    assert ServedAddress.parse("triton://box/winclip").port == 8001
    assert ServedAddress.parse("triton://[::1]:8001/m").target == "[::1]:8001"
    for bad in ("http://box:8001/m", "triton://box:8001/", "triton://box:99999/m", "triton://u:p@box/m",
                "triton://box/m?x=1", "triton://box/m odel"):
        with pytest.raises(AddressError):
            ServedAddress.parse(bad)
    sha = "0123456789abcdef" * 4
    assert served_version(sha) == int(sha[:15], 16) and 0 < served_version(sha) < 2 ** 63


# ---- scores
def test_scores_through_triton_equal_local_scores(served, tiny_bundle):
    frames = frames_of([*textile_images("local", 4), *elpv_images(3)])
    local = local_detector(tiny_bundle)
    remote = local_detector(tiny_bundle, engine=served.engine_url)
    assert remote.backend.name == "triton" and remote.engine.sha256 == local.engine.sha256
    assert "Triton at" in remote.describe() and str(served_version(local.engine.sha256)) in remote.describe()
    assert_same_results(local(frames), remote(frames))
    # a client batch larger than the server's max_batch_size (8) is sent in chunks, in order
    many = frames * 2
    assert_same_results(local(many), remote(many))
    # the precision asked for must be the served one
    with pytest.raises(BundleError, match="not the int8 engine asked for"):
        local_detector(tiny_bundle, engine=served.engine_url, precision="int8")


def test_scores_with_a_profile_through_the_cli(served, tiny_bundle, tmp_path):
    normals = tmp_path / "normals"
    normals.mkdir()
    for p in textile_images("nominal", 12):
        shutil.copy(p, normals / p.name)
    profile = tmp_path / "profile"
    proc = run_cli("winclip-calibrate", str(tiny_bundle), "--normal", str(normals), "--out", str(profile),
                   "--object", "bottle", "--shots", "2", "--false-alarm-rate", "0.1")
    assert proc.returncode == 0, proc.stderr
    parts = tmp_path / "parts"
    parts.mkdir()
    for p in [*textile_images("local", 5), *textile_images("nominal", 3, start=20)]:
        shutil.copy(p, parts / p.name)
    events = {}
    for name, extra in (("local", ()), ("served", ("--engine", served.engine_url))):
        out = tmp_path / name
        proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(parts), "--profile", str(profile),
                       "--out", str(out), *extra)
        assert proc.returncode == 0, proc.stderr
        events[name] = {e["source"]: e for e in strict_lines((out / "events.jsonl").read_text())}
    assert len(events["served"]) == 8 and events["served"].keys() == events["local"].keys()
    for source, mine in events["served"].items():
        theirs = events["local"][source]
        assert "error" not in mine
        assert abs(mine["image_score"] - theirs["image_score"]) <= TOLERANCE
        assert mine["anomalous"] == theirs["anomalous"] and mine["threshold"] == theirs["threshold"]
    # and in the API, maps included
    frames = frames_of(sorted(parts.iterdir()))
    assert_same_results(local_detector(tiny_bundle, profile=profile)(frames),
                        local_detector(tiny_bundle, profile=profile, engine=served.engine_url)(frames))


BLOCK_ENGINES = import_blocker(("onnxruntime", "pytriton", "torch"), "{name} is not installed on this edge client") + """
sys.argv = ["winclip-inspect", *sys.argv[1:]]
from winclip.runtime.line.cli import main
main()
"""


def test_a_client_of_a_served_engine_needs_no_onnxruntime(served, tiny_bundle, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    for p in textile_images("local", 2):
        shutil.copy(p, parts / p.name)
    proc = subprocess.run([sys.executable, "-c", BLOCK_ENGINES, str(tiny_bundle), "--source", str(parts), "--out",
                           str(tmp_path / "out"), "--object", "bottle", "--engine", served.engine_url],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = strict_lines((tmp_path / "out" / "events.jsonl").read_text())
    assert len(events) == 2 and all(0 <= e["image_score"] <= 1 for e in events)


def test_four_clients_two_hundred_frames_each(served, tiny_bundle):
    """Every frame answered once and to its own client; Triton joined requests of different clients."""
    clients, per_client, pool = 4, 200, 12
    images = frames_of(elpv_images(clients * pool, start=40))
    local = local_detector(tiny_bundle)
    expected = [r.image_score for r in local(images)]
    gaps = np.diff(np.sort(expected))
    assert gaps.min() > 10 * TOLERANCE  # every image has a score of its own: a mix-up cannot hide
    before = served.metrics()
    answers: list[list[tuple[int, float]]] = [[] for _ in range(clients)]
    failures: list[BaseException] = []
    start = threading.Barrier(clients)

    def client(c: int) -> None:
        try:
            detector = local_detector(tiny_bundle, engine=served.engine_url, self_check=False)
            start.wait()
            for i in range(per_client):
                k = c * pool + i % pool
                answers[c].append((k, detector(images[k])[0].image_score))
        except BaseException as exc:  # the assertion below names it
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not failures, failures
    for c in range(clients):
        assert len(answers[c]) == per_client
        assert all(abs(score - expected[k]) <= TOLERANCE for k, score in answers[c]), f"client {c} got another's"
    keys = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count",
            "nv_inference_request_failure")

    def counted() -> dict[str, float]:
        after = served.metrics()
        return {k: after[k] - before.get(k, 0.0) for k in keys}

    # Triton counts a request once its response is sent, so the last few may show a moment after their answers:
    # wait (bounded) for the count to reach the frames sent; more than that, or never reaching it, still fails
    deadline = time.monotonic() + 10
    while (delta := counted())["nv_inference_request_success"] < clients * per_client and time.monotonic() < deadline:
        time.sleep(0.2)
    assert delta["nv_inference_request_success"] == clients * per_client  # each frame once: no retries
    assert delta["nv_inference_count"] == clients * per_client and delta["nv_inference_request_failure"] == 0
    assert delta["nv_inference_exec_count"] < delta["nv_inference_count"]  # some engine calls held > 1 frame


# ---- identity and reach
@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """Another bundle (other weights), exported through the CLI with --triton-repo: (bundle, repository)."""
    root = tmp_path_factory.mktemp("other")
    checkpoint = save_checkpoint(make_model(TINY, seed=7), root / "other.pt")
    proc = run_cli("winclip-export", "--model-config", str(TINY_CONFIG), "--backbone", TINY, "--pretrained",
                   str(checkpoint), "--object", "bottle", "--out", str(root / "bundle"),
                   "--triton-repo", str(root / "repo"))
    assert proc.returncode == 0, proc.stderr
    return root / "bundle", root / "repo"


def test_a_server_of_another_bundle_is_refused(server_python, other_bundle, tiny_bundle, tmp_path):
    other, _ = other_bundle
    server = ServeProcess(server_python, other, tmp_path).start()
    try:
        with pytest.raises(BundleError, match="no engine of this bundle"):
            local_detector(tiny_bundle, engine=server.engine_url)
        parts = tmp_path / "parts"
        parts.mkdir()
        shutil.copy(textile_images("local", 1)[0], parts)
        proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(parts), "--out", str(tmp_path / "out"),
                       "--object", "bottle", "--engine", server.engine_url)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert len(lines) == 1 and "another bundle's engine" in lines[0] and server.engine_url in lines[0], lines
        # its own bundle is served
        assert local_detector(other, engine=server.engine_url).engine.precision == "fp32"
    finally:
        server.close()


def test_a_server_that_is_not_there_is_tried_then_one_line(tiny_bundle, tmp_path):
    (port,) = free_ports(1)
    url = f"triton://127.0.0.1:{port}/winclip"
    parts = tmp_path / "parts"
    parts.mkdir()
    shutil.copy(textile_images("local", 1)[0], parts)
    t0 = time.monotonic()
    proc = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(parts), "--out", str(tmp_path / "out"),
                   "--object", "bottle", "--engine", url)
    took = time.monotonic() - t0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(errors) == 1 and "after 3 attempts" in errors[0] and "--wait-for-source" in errors[0], proc.stderr
    assert proc.stderr.count("next try in") == 2 and took >= 1.5  # the backoff: 0.5 s, then 1 s
    usage = run_cli("winclip-inspect", str(tiny_bundle), "--source", str(parts), "--out", str(tmp_path / "o2"),
                    "--engine", url, "--provider", "cpu")
    assert usage.returncode == 2 and "--provider applies to an engine run here" in usage.stderr
    with pytest.raises(BundleError, match="use triton://"):
        local_detector(tiny_bundle, engine=f"grpc://127.0.0.1:{port}/winclip")


def test_winclip_serve_refuses_a_port_in_use(served, tiny_bundle):
    http, metrics = free_ports(2)
    proc = run_cli("winclip-serve", str(tiny_bundle), "--grpc-port", str(served.grpc_port),
                   "--http-port", str(http), "--metrics-port", str(metrics))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert errors == [f"Error: --grpc-port {served.grpc_port} on 127.0.0.1: Address already in use"], proc.stderr
    assert served.ready()  # and the server that holds it is untouched


class Lines:
    """A process's stdout, line by line as it comes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]


def test_a_server_killed_mid_run_and_restarted(server_python, tiny_bundle, tmp_path):
    """A live run that waits for its server, loses it mid-run (SIGKILL: nothing drained), and gets it back:
    error events for the frames in flight, then scoring again; every frame accounted for, strict JSON."""
    frames = textile_frames(6) * 25
    video = write_video(tmp_path / "line.avi", frames)
    decoded = decoded_frames(video)
    expected = [r.image_score for r in local_detector(tiny_bundle)(decoded)]
    server = ServeProcess(server_python, tiny_bundle, tmp_path)
    cmd = [sys.executable, "-m", SCRIPTS["winclip-inspect"], str(tiny_bundle), "--source", str(video),
           "--events", "-", "--object", "bottle", "--engine", server.engine_url, "--wait-for-source"]
    inspect = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = Lines(inspect)
    try:
        time.sleep(2.0)  # the client keeps trying a server that is not there yet
        assert inspect.poll() is None
        server.start()
        assert wait_for(lambda: len([e for e in out.events() if "image_score" in e]) >= 20, timeout=180)
        server.kill()
        assert wait_for(lambda: any("error" in e for e in out.events()), timeout=60)
        server.start()
        code = inspect.wait(600)
        out.thread.join(10)
        stderr = inspect.stderr.read()
        assert code == 0, stderr[-3000:]
        events = strict_lines("".join(out.lines))
        framed = [e for e in events if "frame" in e]
        assert sorted(e["frame"] for e in framed) == list(range(len(decoded)))  # every frame once
        errors = [e for e in framed if "error" in e]
        assert errors and all("served engine" in e["error"] for e in errors)
        first_error = framed.index(errors[0])
        assert any("image_score" in e for e in framed[first_error:])  # it recovered
        for e in framed:  # whatever was scored is right: never a silent pass
            if "image_score" in e:
                assert abs(e["image_score"] - expected[e["frame"]]) <= TOLERANCE
        assert "next try in" in stderr and "lost" in stderr and "is back after" in stderr
        assert events[-1]["event"] == "run_stopped" and events[-1]["errors"] == len(errors)
        # SIGTERM: in-flight requests drain, exit 0
        assert server.terminate(90) == 0
        assert "stopping (SIGTERM)" in server.log_tail() and server.log_tail().rstrip().endswith("stopped")
    finally:
        if inspect.poll() is None:
            inspect.kill()
        server.close()


# ---- the model repository for NVIDIA's images (not served here: the PyTriton wheel has no onnxruntime backend)
def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _graph_io(path: Path) -> tuple[list, list]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def io(values):
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param
                                                        for d in v.type.tensor_type.shape.dim]) for v in values]

    initializers = {i.name for i in model.graph.initializer}
    return io([v for v in model.graph.input if v.name not in initializers]), io(model.graph.output)


def check_repository(model_dir: Path, bundle: Path, *, max_batch: int, delay_us: int | None, instances: int,
                     kind: str, accelerator: tuple[str, str] | None) -> None:
    """Every field of config.pbtxt against the graph in the version folder and the bundle's manifest."""
    from tritonclient.grpc import model_config_pb2 as pb

    manifest = json.loads((bundle / "manifest.json").read_text())
    config = _parse_config(model_dir / "config.pbtxt")
    versions = [p for p in model_dir.iterdir() if p.name.isdigit()]
    assert len(versions) == 1
    graph = versions[0] / "model.onnx"
    import hashlib

    sha = hashlib.sha256(graph.read_bytes()).hexdigest()
    assert sha in [e["sha256"] for e in manifest["engines"]]
    assert int(versions[0].name) == served_version(sha)
    assert config.name == model_dir.name and config.platform == "onnxruntime_onnx"
    assert list(config.version_policy.specific.versions) == [served_version(sha)]
    assert config.max_batch_size == max_batch
    inputs, outputs = _graph_io(graph)
    onnx_to_triton = {1: pb.TYPE_FP32, 10: pb.TYPE_FP16}
    for declared, actual in ((config.input, inputs), (config.output, outputs)):
        assert [d.name for d in declared] == [name for name, _, _ in actual]
        for d, (name, elem, dims) in zip(declared, actual):
            assert d.data_type == onnx_to_triton[elem]
            assert isinstance(dims[0], str)  # the graph's batch axis is dynamic: Triton's max_batch_size batches it
            assert len(d.dims) == len(dims) - 1
            assert all(c == g for c, g in zip(d.dims, dims[1:]) if isinstance(g, int))  # static in the graph
    # the graph run on a batch of the declared input: every output has its declared dims
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    (declared_input,) = config.input
    batch = np.zeros((2, *declared_input.dims), np.float32)
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, {declared_input.name: batch})))
    for d in config.output:
        assert results[d.name].shape == (2, *d.dims) and results[d.name].dtype == np.float32
    if delay_us is None:
        assert not config.HasField("dynamic_batching")
    else:
        assert config.dynamic_batching.max_queue_delay_microseconds == delay_us
    assert [(g.count, g.kind) for g in config.instance_group] == [(instances, kind)]
    accelerators = config.optimization.execution_accelerators
    found = [(a.name, dict(a.parameters)) for a in [*accelerators.gpu_execution_accelerator,
                                                    *accelerators.cpu_execution_accelerator]]
    assert [name for name, _ in found] == ([accelerator[0]] if accelerator else [])
    if accelerator and accelerator[1]:
        assert found[0][1]["precision_mode"] == accelerator[1]
    assert config.parameters["winclip_engine_sha256"].string_value == sha
    beside = model_dir / "bundle"
    assert (beside / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
    for ref in manifest["text"]["objects"].values():
        assert (beside / ref["file"]).read_bytes() == (bundle / ref["file"]).read_bytes()


def test_the_triton_repository_matches_the_graph(tiny_bundle, other_bundle, tmp_path):
    from tritonclient.grpc import model_config_pb2 as pb

    repo = tmp_path / "repo"
    proc = run_cli("winclip-serve", str(tiny_bundle), "--write-repo", str(repo), "--model-name", "line-7",
                   "--max-batch", "4", "--max-queue-delay-us", "500", "--instances", "2",
                   "--repo-target", "gpu-tensorrt")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == repo / "line-7"
    check_repository(repo / "line-7", tiny_bundle, max_batch=4, delay_us=500, instances=2,
                     kind=pb.ModelInstanceGroup.KIND_GPU, accelerator=("tensorrt", "FP32"))
    proc = run_cli("winclip-serve", str(tiny_bundle), "--write-repo", str(repo), "--model-name", "cpu-line",
                   "--no-dynamic-batching", "--repo-target", "cpu-openvino")
    assert proc.returncode == 0, proc.stderr
    check_repository(repo / "cpu-line", tiny_bundle, max_batch=defaults.MAX_BATCH, delay_us=None, instances=1,
                     kind=pb.ModelInstanceGroup.KIND_CPU, accelerator=("openvino", ""))
    again = run_cli("winclip-serve", str(tiny_bundle), "--write-repo", str(repo), "--model-name", "cpu-line")
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    misplaced = run_cli("winclip-serve", str(tiny_bundle), "--write-repo", str(repo), "--grpc-port", "9001")
    assert misplaced.returncode == 2 and "--grpc-port applies to a running server" in misplaced.stderr
    # winclip-export --triton-repo: the defaults (GPU, onnxruntime's own provider)
    other, other_repo = other_bundle
    check_repository(other_repo / "winclip", other, max_batch=defaults.MAX_BATCH,
                     delay_us=defaults.MAX_QUEUE_DELAY_US, instances=defaults.INSTANCES,
                     kind=pb.ModelInstanceGroup.KIND_GPU, accelerator=None)


# ---- the benchmark's mechanics (not its speed)
def test_bench_serve_writes_every_row(server_python, tiny_bundle, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "winclip.benchmarks.bench_serve", str(tiny_bundle), "--clients", "1,2",
                           "--frames", "3", "--warmup", "0", "--server-python", server_python, "--note", "test",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench_serve.json").read_text())
    assert (out / "bench_serve.md").read_text().strip() == proc.stdout.strip()
    rows = {(r["mode"], r["clients"]): r for r in result["rows"]}
    assert set(rows) == {(m, c) for m in ("local, in process", "served, dynamic batching",
                                          "served, no dynamic batching") for c in (1, 2)}
    for (mode, clients), r in rows.items():
        assert r["frames"] == 3 * clients and r["fps"] > 0 and 0 < r["p50_ms"] <= r["p95_ms"]
        assert ("Triton at" in r["engine"]) == mode.startswith("served")
    assert rows[("served, no dynamic batching", 2)]["mean_batch"] == 1.0  # Triton's own count: one frame a call
    assert rows[("local, in process", 2)]["mean_batch"] == 2.0
    assert result["machine"]["cores"] >= 1 and len(result["load_before"]) == 3

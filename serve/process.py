"""winclip-serve as a child process: started on free ports, waited for, measured, stopped or killed.

The tests and benchmarks/bench_serve.py start their servers with this, so both
run the very command a plant runs. `python` may be another environment's
interpreter (nvidia-pytriton pins numpy<2, so the server often lives in a venv
of its own: WINCLIP_SERVE_PYTHON names it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from winclip.runtime.defaults import SERVED_MODEL_NAME
from winclip.runtime.served import ServedAddress
from winclip.serve.defaults import HOST

SERVE_PYTHON_VARIABLE = "WINCLIP_SERVE_PYTHON"
_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')


def serve_python() -> str | None:
    """The interpreter to run winclip-serve with: $WINCLIP_SERVE_PYTHON, else this one if it has PyTriton."""
    given = os.environ.get(SERVE_PYTHON_VARIABLE)
    if given:
        return given
    try:
        import pytriton  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def free_ports(n: int, host: str = HOST) -> list[int]:
    """n ports nothing listens on now (held together while chosen, so they differ)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """Triton's Prometheus samples for one model, summed over versions: {"nv_inference_count": ...}."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line.strip())
        if match and f'model="{model}"' in match.group(2):
            totals[match.group(1)] = totals.get(match.group(1), 0.0) + float(match.group(3))
    return totals


class ServeProcess:
    """`winclip-serve BUNDLE ...` in its own process group, its output in LOG_DIR/serve.log."""

    def __init__(self, python: str, bundle: Path, log_dir: Path, *args: str, host: str = HOST,
                 ports: list[int] | None = None, model: str = SERVED_MODEL_NAME, env: dict | None = None):
        self.python, self.bundle, self.args = python, Path(bundle), list(args)
        self.host, self.model = host, model
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3, host)
        self.log_path = Path(log_dir) / "serve.log"
        self.env = {**os.environ, **(env or {})}
        self.tmp: str | None = None  # the server's TMPDIR (PyTriton's workspace), removed when it ends
        self.proc: subprocess.Popen | None = None

    @property
    def engine_url(self) -> str:
        return str(ServedAddress(self.host, self.grpc_port, self.model))

    def start(self, timeout: float = 180.0) -> "ServeProcess":
        """Start and wait until Triton says ready; RuntimeError with the log's tail when it does not."""
        cmd = [self.python, "-m", "winclip.serve.cli", str(self.bundle), "--host", self.host,
               "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
               "--metrics-port", str(self.metrics_port), "--model-name", self.model, *self.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="wsp-")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**self.env, "TMPDIR": self.tmp}, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"winclip-serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"winclip-serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def ready(self) -> bool:
        """Triton ready and the model loaded (PyTriton loads it after the server is up, so both are asked)."""
        base = f"http://{self.host}:{self.http_port}/v2"
        try:
            for url in (f"{base}/health/ready", f"{base}/models/{self.model}/ready"):
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status != 200:
                        return False
            return True
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=5) as response:
            return parse_metrics(response.read().decode(), self.model)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 90.0) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._remove_tmp()
        return code

    def kill(self) -> None:
        """SIGKILL to the whole process group (the server and Triton with it): a crash, nothing drained."""
        if self.proc is None:
            return
        regions = shared_memory_of_group(self.proc.pid)  # asked before the processes are gone
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        for region in regions | set(Path("/dev/shm").glob(f"pytrtion{self.proc.pid}-*")):
            region.unlink(missing_ok=True)
        self._remove_tmp()

    def close(self) -> None:
        """Stop it however it is: SIGTERM first, SIGKILL when it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            self._remove_tmp()
            return
        try:
            self.terminate(60)
        except subprocess.TimeoutExpired:
            self.kill()

    def _remove_tmp(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def shared_memory_of_group(pgid: int) -> set[Path]:
    """/dev/shm regions the process group has open or mapped: what a SIGKILL leaves behind (PyTriton names some
    "pytrtion<pid>-...", its tensor store's are Python's "psm_..."); empty where /proc cannot tell."""
    found: set[Path] = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            links = [os.readlink(fd) for fd in (proc / "fd").iterdir()]
            maps = [line.split(None, 5)[-1] for line in (proc / "maps").read_text().splitlines()]
        except (OSError, ValueError, IndexError):
            continue
        found |= {Path(p.removesuffix(" (deleted)")) for p in [*links, *maps] if p.startswith("/dev/shm/")}
    return found

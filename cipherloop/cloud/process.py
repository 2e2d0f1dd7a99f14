"""The service as a child process: for the demo, benchmarks and end-to-end tests.

Runs in: host (the operator tooling that launches the service). ``python -m
cipherloop.cloud.server`` on a free loopback port, in its own process group
so that stopping it -- or killing it with ``kill -9`` -- takes its worker and
enclave along, exactly as a crashed machine would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from ..errors import CipherloopError


class ServiceStartError(CipherloopError):
    """The service process exited or did not answer in time; its log says why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Pids of all live descendants of ``pid``, read from ``/proc`` (Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] == "Z":
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class ServiceProcess:
    """One service process on ``127.0.0.1``; a context manager.

    Parameters
    ----------
    data_dir : the service's ``--data-dir`` (database, blobs, enclave state).
    admin_token : ``CIPHERLOOP_ADMIN_TOKEN`` for the child.
    args : extra command-line flags (e.g. ``--enclave-address``).
    env : extra environment variables.
    log_path : where stdout and stderr go (default: ``service-<port>.log`` beside ``data_dir``).
    poll_interval_s : how often the round worker looks for work.
    """

    def __init__(self, data_dir: Path, *, admin_token: str, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, log_path: Path | None = None,
                 poll_interval_s: float = 0.2, startup_timeout: float = 90.0) -> None:
        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or self.data_dir.parent / f"service-{self.port}.log"
        self._cmd = [sys.executable, "-m", "cipherloop.cloud.server", "--data-dir", str(data_dir),
                     "--host", "127.0.0.1", "--port", str(self.port),
                     "--poll-interval-s", str(poll_interval_s), *args]
        self._env = {**os.environ, **(env or {}), "CIPHERLOOP_ADMIN_TOKEN": admin_token}
        self._startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"ServiceProcess({self.url!r}, pid={self.proc.pid if self.proc else None})"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self._cmd, env=self._env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise ServiceStartError(f"the service exited at start; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(f"the service did not come up; see {self.log_path}")
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the service's main process only (as systemd or a shell would)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def descendants(self) -> list[int]:
        """Pids of every process below the service's main one (its enclave and worker)."""
        if self.proc is None:
            return []
        return descendants(self.proc.pid)

    def kill9(self) -> None:
        """SIGKILL the whole process group: server, worker and enclave die mid-whatever."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL what is still there after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

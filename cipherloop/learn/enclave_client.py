"""The host's one way to talk to the enclave: a small client stub and a process launcher.

Runs in: host (and on the owner's machine when the estimator starts its own
enclave). Every call is one request frame and one reply frame; a dead or
hung enclave surfaces as :class:`EnclaveUnavailable`, never as a hang.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .. import errors
from ..enclave.framing import DEFAULT_MAX_FRAME, recv_frame, send_frame
from ..errors import CipherloopError, EnclaveError, EnclaveUnavailable, ProtocolError

#: Every error class the enclave may name in a refusal, by name; anything else is EnclaveError.
_REMOTE_ERRORS: dict[str, type[Exception]] = {
    name: cls for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, CipherloopError)
}
_REMOTE_ERRORS["KeyMaterialError"] = EnclaveError


class EnclaveClient:
    """Calls enclave operations over a Unix socket; thread-safe, reconnects as needed.

    Parameters
    ----------
    address : path of the enclave's Unix socket.
    timeout : seconds to wait for any one reply before giving up.
    """

    def __init__(self, address: str | os.PathLike[str], *, timeout: float = 300.0,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.address = str(address)
        self.timeout = timeout
        self.max_frame = max_frame
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"EnclaveClient({self.address!r})"

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            try:
                s.connect(self.address)
            except OSError:
                s.close()
                raise EnclaveUnavailable("enclave is not reachable") from None
            self._sock = s
        return self._sock

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """One operation; remote refusals are raised as the matching local error."""
        with self._lock:
            sock = self._connect()
            try:
                send_frame(sock, {"op": op, "id": next(self._ids), "args": args})
                reply = recv_frame(sock, max_bytes=self.max_frame)
            except (OSError, ProtocolError):
                sock.close()
                self._sock = None
                raise EnclaveUnavailable(f"enclave died or hung during {op!r}") from None
        if reply.get("ok") is True and isinstance(reply.get("result"), dict):
            result: dict[str, Any] = reply["result"]
            return result
        err: dict[str, Any] = reply["error"] if isinstance(reply.get("error"), dict) else {}
        kind = _REMOTE_ERRORS.get(str(err.get("type")), EnclaveError)
        if kind is ProtocolError:
            self.close()
        raise kind(f"enclave refused {op!r}: {err.get('message', 'no reason given')}")

    # -- typed operations ------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        return self.call("hello")

    def attest(self, nonce: bytes, session_id: bytes) -> dict[str, Any]:
        """Ask for evidence bound to the owner's challenge (an offer, see ``enclave.provision``)."""
        return self.call("attest", nonce=nonce, session_id=session_id)

    def provision(self, session_id: bytes, envelope: bytes) -> str:
        """Deliver the owner's HPKE envelope for that session; returns the installed key id."""
        return str(self.call("provision", session_id=session_id, envelope=envelope)["key_id"])

    def provision_local(self, secret: bytes, policy: dict[str, Any] | None = None) -> str:
        """Unattested development hand-over; the enclave refuses it unless started to allow it."""
        return str(self.call("provision_local", secret=secret, policy=policy or {})["key_id"])

    def refresh(self, key_id: str, batches: Sequence[bytes]) -> list[bytes]:
        """Fresh copies at the top level and nominal scale (the enclave fixes the encoding)."""
        out = self.call("refresh", key_id=key_id, batches=list(batches))["batches"]
        return [bytes(b) for b in out]

    def logistic_error(self, key_id: str, *, z: bytes, y: bytes, features: dict[str, Any],
                       first_block: int, start: int, stop: int, learning_rate: float,
                       level: int, intercept: bool) -> tuple[bytes, bytes | None]:
        r = self.call("logistic_error", key_id=key_id, z=z, y=y, features=features,
                      first_block=first_block, start=start, stop=stop,
                      learning_rate=learning_rate, level=level, intercept=intercept)
        return bytes(r["e"]), (bytes(r["e_sum"]) if r.get("e_sum") is not None else None)

    def softmax_error(self, key_id: str, *, z: Sequence[bytes], y: bytes, features: dict[str, Any],
                      first_block: int, start: int, stop: int, learning_rate: float, level: int,
                      intercept: bool, transposed: bool = False
                      ) -> tuple[list[bytes], bytes | None, bytes | None]:
        """Softmax errors per class (pre-rotated), their sums, and ``E`` as diagonals if asked."""
        r = self.call("softmax_error", key_id=key_id, z=list(z), y=y, features=features,
                      first_block=first_block, start=start, stop=stop,
                      learning_rate=learning_rate, level=level, intercept=intercept,
                      transposed=transposed)
        return ([bytes(b) for b in r["e"]], _maybe(r.get("e_sum")), _maybe(r.get("e_diag")))

    def mlp_hidden(self, key_id: str, *, z: Sequence[bytes], features: dict[str, Any],
                   first_block: int, start: int, stop: int, activation: str, n_classes: int
                   ) -> tuple[bytes, list[bytes]]:
        """Activations as diagonals (next layer's features) and as errors for ``E.T @ A``."""
        r = self.call("mlp_hidden", key_id=key_id, z=list(z), features=features,
                      first_block=first_block, start=start, stop=stop, activation=activation,
                      n_classes=n_classes)
        return bytes(r["a"]), [bytes(b) for b in r["a_err"]]

    def mlp_backward(self, key_id: str, *, p: Sequence[bytes], z: Sequence[bytes],
                     features: dict[str, Any], first_block: int, start: int, stop: int,
                     activation: str, level: int, intercept: bool
                     ) -> tuple[list[bytes], bytes | None]:
        """Hidden-layer errors per unit (pre-rotated for ``X.T @ delta``) and their sums."""
        r = self.call("mlp_backward", key_id=key_id, p=list(p), z=list(z), features=features,
                      first_block=first_block, start=start, stop=stop, activation=activation,
                      level=level, intercept=intercept)
        return [bytes(b) for b in r["delta"]], _maybe(r.get("delta_sum"))

    def evaluate(self, key_id: str, *, model: dict[str, Any], features: bytes, labels: bytes,
                 metrics: Sequence[str] = ("accuracy", "log_loss")) -> dict[str, float]:
        """Metrics of ``model`` on a hold-out set the owner pinned (batches as uploaded)."""
        r = self.call("evaluate", key_id=key_id, model=model, features=features, labels=labels,
                      metrics=list(metrics))
        return {str(k): float(v) for k, v in r.items()}

    def compare(self, key_id: str, *, candidate: dict[str, Any], current: dict[str, Any],
                features: bytes, labels: bytes, metric: str = "log_loss",
                with_metrics: bool = False) -> dict[str, Any]:
        """Promote or keep ``candidate`` over ``current`` on a pinned hold-out set."""
        return self.call("compare", key_id=key_id, candidate=candidate, current=current,
                         features=features, labels=labels, metric=metric,
                         with_metrics=with_metrics)


def _maybe(raw: Any) -> bytes | None:
    return None if raw is None else bytes(raw)


class EnclaveProcess:
    """Starts ``python -m cipherloop.enclave`` as a separate OS process and stops it.

    Use as a context manager; :attr:`client` talks to it. :meth:`start` may be
    called again after the process died (a supervisor restarts it on the same
    socket path; the enclave restores its sealed keys on its own).
    ``parent_pid`` makes the enclave exit when that process dies, even by
    ``kill -9`` (the current process by default).
    """

    def __init__(self, *, state_dir: str | os.PathLike[str] | None = None,
                 socket_path: str | os.PathLike[str] | None = None,
                 platform: str = "sim", startup_timeout: float = 60.0,
                 extra_args: Sequence[str] = (), log_path: str | os.PathLike[str] | None = None,
                 timeout: float = 300.0, parent_pid: int | None = None) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="cipherloop-enclave-")
            state_dir = self._tmp.name
        self.state_dir = Path(state_dir)
        self.socket_path = Path(socket_path) if socket_path else self.state_dir / "enclave.sock"
        self.platform = platform
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self.log_path = log_path
        self.timeout = timeout
        self.parent_pid = os.getpid() if parent_pid is None else parent_pid
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = EnclaveClient(self.socket_path, timeout=timeout)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        """Whether the process runs (a dead one is reaped here)."""
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"EnclaveProcess(pid={pid}, socket={str(self.socket_path)!r})"

    def start(self) -> EnclaveProcess:
        if self.alive():
            raise EnclaveUnavailable("the enclave process is already running")
        self.client.close()  # a connection to a dead predecessor, if any
        # Whatever still listens on this path is not ours: unlinked, it can't be reached, so
        # the hello below can only be answered by the process started here.
        self.socket_path.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "cipherloop.enclave", "--socket", str(self.socket_path),
               "--state-dir", str(self.state_dir), "--platform", self.platform,
               "--parent-pid", str(self.parent_pid), *self.extra_args]
        if (self.parent_pid == os.getpid()
                and threading.current_thread() is threading.main_thread()):
            cmd.append("--pdeathsig")  # Linux signals when *this thread* ends: main only
        if self.log_path:
            with open(self.log_path, "ab") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        else:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise EnclaveUnavailable(f"enclave process exited at start (code {self.proc.returncode})")
            try:
                self.client.hello()
                return self
            except EnclaveUnavailable:
                if time.monotonic() > deadline:
                    self.stop()
                    raise EnclaveUnavailable("enclave process did not come up in time") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EnclaveProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

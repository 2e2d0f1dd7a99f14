"""The enclave process: serves the operations of :mod:`.api` over a local stream socket.

Runs in: enclave. One request frame in, one reply frame out. A bad request
gets an error reply and the process keeps serving; an oversized or truncated
frame also closes that connection (it can't be resynchronised cheaply).
Errors carry only messages cipherloop wrote itself; anything unexpected is
reported as a generic internal error, logged by type name only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CipherloopError, EnclaveError, ProtocolError
from . import api
from .framing import DEFAULT_MAX_FRAME, PROTOCOL, PeerClosed, recv_frame, send_frame
from .keystore import KeyStore
from .policy import Policy

log = logging.getLogger("cipherloop.enclave")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class EnclaveConfig:
    """How the enclave process runs.

    ``allow_local_provisioning`` admits the development key hand-over
    (``provision_local``); attested provisioning replaces it in production.
    """

    socket_path: Path
    max_frame: int = DEFAULT_MAX_FRAME
    platform: str = "sim"
    allow_local_provisioning: bool = True


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = args.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise EnclaveError(f"request field {name!r} is missing or has the wrong type")
    return value


def _opt(args: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    return default if args.get(name) is None else _arg(args, name, kind)


class Enclave:
    """Operation dispatch over a :class:`KeyStore`; transport-free, so tests can call it."""

    def __init__(self, config: EnclaveConfig, keys: KeyStore | None = None) -> None:
        self.config = config
        self.keys = keys if keys is not None else KeyStore()
        self._ops: dict[str, Handler] = {
            "hello": self._hello,
            "provision_local": self._provision_local,
            "refresh": self._refresh,
            "logistic_error": self._logistic_error,
            "evaluate": self._evaluate,
            "compare": self._compare,
        }

    def register(self, name: str, handler: Handler) -> None:
        """Add an operation (attested provisioning plugs in here)."""
        self._ops[name] = handler

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise EnclaveError("unknown operation")
            args = msg.get("args", {})
            if not isinstance(args, dict):
                raise EnclaveError("request args must be a map")
            return {"ok": True, "result": handler(args)}
        except CipherloopError as exc:
            return {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
        except Exception as exc:  # never echo: a message could carry decrypted values
            log.error("internal error in %s: %s", op, type(exc).__name__)
            return {"ok": False, "error": {"type": "EnclaveError", "message": "internal error"}}

    # -- operations ----------------------------------------------------------
    def _hello(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"protocol": PROTOCOL, "platform": self.config.platform, "pid": os.getpid(),
                "keys": self.keys.key_ids()}

    def _provision_local(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.config.allow_local_provisioning:
            raise EnclaveError("local provisioning is disabled; use attested provisioning")
        try:
            policy = Policy.from_dict(_opt(args, "policy", dict, {}))
        except (TypeError, ValueError):
            raise EnclaveError("malformed policy") from None
        return {"key_id": self.keys.install(_arg(args, "secret", bytes), policy)}

    def _refresh(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        batches = _arg(args, "batches", list)
        if not all(isinstance(b, bytes) for b in batches):
            raise EnclaveError("request field 'batches' must hold byte strings")
        out = api.refresh(entry, batches, level=_opt(args, "level", int, None),
                          max_bytes=self.config.max_frame)
        return {"batches": out}

    def _logistic_error(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        e, s = api.logistic_error(
            entry,
            _arg(args, "z", bytes),
            _arg(args, "y", bytes),
            features=_arg(args, "features", dict),
            first_block=_arg(args, "first_block", int),
            start=_arg(args, "start", int),
            stop=_arg(args, "stop", int),
            learning_rate=float(_arg(args, "learning_rate", (int, float))),
            level=_arg(args, "level", int),
            intercept=bool(_opt(args, "intercept", bool, False)),
            max_bytes=self.config.max_frame,
        )
        return {"e": e, "e_sum": s}

    def _evaluate(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        metrics = _arg(args, "metrics", list)
        return api.evaluate(entry, _arg(args, "z", bytes), _arg(args, "y", bytes),
                            metrics=[str(m) for m in metrics], max_bytes=self.config.max_frame)

    def _compare(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        return api.compare(entry, _arg(args, "candidate", bytes), _arg(args, "current", bytes),
                           _arg(args, "y", bytes), metric=str(_opt(args, "metric", str, "log_loss")),
                           max_bytes=self.config.max_frame)


class _RequestHandler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        enclave = self.server.enclave
        while True:
            try:
                msg = recv_frame(sock, max_bytes=enclave.config.max_frame)
            except PeerClosed:
                return
            except ProtocolError as exc:
                # Oversized, truncated or garbage: say so, then drop the connection.
                with contextlib.suppress(OSError):
                    send_frame(sock, {"ok": False, "error": {"type": "ProtocolError",
                                                             "message": str(exc)}})
                return
            except OSError:
                return
            reply = enclave.handle(msg)
            reply["id"] = msg.get("id") if isinstance(msg.get("id"), int) else None
            try:
                send_frame(sock, reply)
            except OSError:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, enclave: Enclave) -> None:
        self.enclave = enclave
        super().__init__(path, _RequestHandler)


def serve(config: EnclaveConfig, enclave: Enclave | None = None,
          ready: threading.Event | None = None) -> None:
    """Listen on ``config.socket_path`` (owner-only permissions) until interrupted."""
    path = config.socket_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    old = os.umask(0o177)
    try:
        server = _Server(str(path), enclave if enclave is not None else Enclave(config))
    finally:
        os.umask(old)
    log.info("enclave (%s platform) listening on %s", config.platform, path)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        path.unlink(missing_ok=True)

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
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CipherloopError, EnclaveError, ProtocolError, ProvisioningFailed
from . import api, provision
from .framing import DEFAULT_MAX_FRAME, PROTOCOL, PeerClosed, recv_frame, send_frame
from .keystore import KeyStore
from .platform import Platform, load_platform
from .policy import Policy

log = logging.getLogger("cipherloop.enclave")

Handler = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class EnclaveConfig:
    """How the enclave process runs.

    ``state_dir`` holds the platform's state (for ``sim``: its root and host
    secret) and the sealed keys, so a restarted enclave serves without the
    owner. ``allow_local_provisioning`` admits the development key hand-over
    (``provision_local``), off by default: keys arrive by attested provisioning.
    """

    socket_path: Path
    state_dir: Path
    max_frame: int = DEFAULT_MAX_FRAME
    platform: str = "sim"
    allow_local_provisioning: bool = False

    @property
    def sealed_dir(self) -> Path:
        return self.state_dir / "sealed-keys"


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = args.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise EnclaveError(f"request field {name!r} is missing or has the wrong type")
    return value


def _opt(args: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    return default if args.get(name) is None else _arg(args, name, kind)


class Enclave:
    """Operation dispatch over a :class:`KeyStore`; transport-free, so tests can call it."""

    MAX_PENDING = 16

    def __init__(self, config: EnclaveConfig, keys: KeyStore | None = None,
                 platform: Platform | None = None) -> None:
        self.config = config
        self.keys = keys if keys is not None else KeyStore()
        settings = {"state_dir": config.state_dir / "platform"} if config.platform == "sim" else {}
        self.platform = platform if platform is not None else load_platform(config.platform, **settings)
        self.measurement = self.platform.measurement().hex()
        # The simulated platform makes its root and host secret on first use; make them
        # at start, so an owner can pin the root before sending the first challenge.
        prepare = getattr(self.platform, "root_certificate_pem", None)
        if callable(prepare):
            prepare()
        self._pending: OrderedDict[bytes, provision.ProvisionState] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._ops: dict[str, Handler] = {
            "hello": self._hello,
            "attest": self._attest,
            "provision": self._provision,
            "provision_local": self._provision_local,
            "refresh": self._refresh,
            "logistic_error": self._logistic_error,
            "evaluate": self._evaluate,
            "compare": self._compare,
        }

    def restore_sealed(self) -> int:
        """Unseal every key sealed by this enclave code; a restart needs no owner."""
        restored = 0
        for path in sorted(self.config.sealed_dir.glob("*.sealed")):
            try:
                key = provision.load_sealed(self.platform, path)
                self.keys.install(key.secret_key_bytes, Policy.from_dict(dict(key.policy)))
                restored += 1
            except (CipherloopError, ValueError, TypeError):
                log.warning("sealed key %s does not unseal under this enclave's measurement",
                            path.name)
        return restored

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
        return {"protocol": PROTOCOL, "platform": self.platform.name, "pid": os.getpid(),
                "measurement": self.measurement, "keys": self.keys.key_ids()}

    def _attest(self, args: dict[str, Any]) -> dict[str, Any]:
        """Step 2 of provisioning: an ephemeral key and evidence bound to the owner's challenge."""
        nonce, session = _arg(args, "nonce", bytes), _arg(args, "session_id", bytes)
        try:
            offer, state = provision.begin(self.platform, nonce, session)
        except ValueError:
            raise EnclaveError("nonce must be 32 bytes and session_id 16 bytes") from None
        with self._pending_lock:
            self._pending[session] = state
            while len(self._pending) > self.MAX_PENDING:
                self._pending.popitem(last=False)
        return offer.to_dict()

    def _provision(self, args: dict[str, Any]) -> dict[str, Any]:
        """Step 5: open the owner's envelope, install the key, seal it to storage."""
        session, envelope = _arg(args, "session_id", bytes), _arg(args, "envelope", bytes)
        with self._pending_lock:
            state = self._pending.pop(session, None)
        if state is None:
            raise ProvisioningFailed("provisioning failed")
        key = provision.accept(state, envelope)
        try:
            policy = Policy.from_dict(dict(key.policy))
        except (TypeError, ValueError):
            raise ProvisioningFailed("provisioning failed") from None
        key_id = self.keys.install(key.secret_key_bytes, policy)
        provision.store_sealed(self.platform, self.config.sealed_dir / f"{key_id}.sealed", key)
        return {"key_id": key_id}

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
    enclave = server.enclave
    restored = enclave.restore_sealed()
    log.info("enclave (%s platform, measurement %s...) listening on %s with %d sealed key(s)",
             enclave.platform.name, enclave.measurement[:16], path, restored)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        path.unlink(missing_ok=True)

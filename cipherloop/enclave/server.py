"""The enclave process: serves the operations of :mod:`.api` over a local stream socket.

Runs in: enclave. One request frame in, one reply frame out. A bad request
gets an error reply and the process keeps serving; an oversized or truncated
frame also closes that connection (it can't be resynchronised cheaply).
Errors carry only messages cipherloop wrote itself; anything unexpected is
reported as a generic internal error, logged by type name only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import socketserver
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..ckks import SecretContext
from ..errors import (
    BadRequest,
    CipherloopError,
    ProtocolError,
    ProvisioningFailed,
    StateDirLocked,
)
from . import api, nonlinear, provision
from .framing import DEFAULT_MAX_FRAME, PROTOCOL, PeerClosed, recv_frame, send_frame
from .keystore import KeyState, KeyStore
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
        raise BadRequest(f"request field {name!r} is missing or has the wrong type")
    return value


def _opt(args: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    return default if args.get(name) is None else _arg(args, name, kind)


def _bytes_list(args: dict[str, Any], name: str) -> list[bytes]:
    value = _arg(args, name, list)
    if not all(isinstance(b, bytes) for b in value):
        raise BadRequest(f"request field {name!r} must hold byte strings")
    return list(value)


class Enclave:
    """Operation dispatch over a :class:`KeyStore`; transport-free, so tests can call it.

    Holds an exclusive lock on ``state_dir`` for its lifetime: two enclaves on
    one state directory would fork the release budget. :meth:`close` releases it.
    """

    MAX_PENDING = 1024
    PENDING_TTL_S = 600.0

    def __init__(self, config: EnclaveConfig, keys: KeyStore | None = None,
                 platform: Platform | None = None) -> None:
        self.config = config
        self._lock_fd = _lock_state_dir(config.state_dir)
        # Released on close() or, failing that, when this object is collected.
        self._release = weakref.finalize(self, os.close, self._lock_fd)
        try:
            settings = {"state_dir": config.state_dir / "platform"} if config.platform == "sim" else {}
            self.platform = (platform if platform is not None
                             else load_platform(config.platform, **settings))
            self.measurement = self.platform.measurement().hex()
            # The simulated platform makes its root and host secret on first use; make them
            # at start, so an owner can pin the root before sending the first challenge.
            prepare = getattr(self.platform, "root_certificate_pem", None)
            if callable(prepare):
                prepare()
        except BaseException:
            self.close()
            raise
        self.keys = keys if keys is not None else KeyStore(persist=self._persist)
        self._pending: OrderedDict[bytes, tuple[float, provision.ProvisionState]] = OrderedDict()
        self._pending_lock = threading.Lock()
        self._ops: dict[str, Handler] = {
            "hello": self._hello,
            "attest": self._attest,
            "provision": self._provision,
            "provision_local": self._provision_local,
            "refresh": self._refresh,
            "logistic_error": self._logistic_error,
            "softmax_error": self._softmax_error,
            "mlp_hidden": self._mlp_hidden,
            "mlp_backward": self._mlp_backward,
            "evaluate": self._evaluate,
            "compare": self._compare,
        }

    def close(self) -> None:
        """Release the state-directory lock."""
        self._release()

    def _persist(self, context: SecretContext, secret: bytes, state: KeyState) -> None:
        """Seal a key with its state and replace its file durably (before any release)."""
        key = provision.ProvisionedKey(secret, context.key_id, context.params.digest(),
                                       state.policy.to_dict(), state.to_dict())
        provision.store_sealed(self.platform, self.config.sealed_dir / f"{context.key_id}.sealed",
                               key)

    def restore_sealed(self) -> int:
        """Unseal every key sealed by this enclave code, with its state; no owner needed."""
        restored = 0
        for path in sorted(self.config.sealed_dir.glob("*.sealed")):
            try:
                key = provision.load_sealed(self.platform, path)
                state = (KeyState.from_dict(key.state) if key.state is not None
                         else KeyState(Policy.from_dict(dict(key.policy))))
                self.keys.install(key.secret_key_bytes, state.policy, state=state, restoring=True)
                restored += 1
            except (CipherloopError, ValueError, TypeError, KeyError):
                log.warning("sealed key %s does not unseal under this enclave's measurement",
                            path.name)
        return restored

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise BadRequest("unknown operation")
            args = msg.get("args", {})
            if not isinstance(args, dict):
                raise BadRequest("request args must be a map")
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
            raise BadRequest("nonce must be 32 bytes and session_id 16 bytes") from None
        now = time.monotonic()
        with self._pending_lock:
            self._pending[session] = (now, state)
            self._pending.move_to_end(session)
            for sid in [s for s, (t, _) in self._pending.items() if now - t > self.PENDING_TTL_S]:
                del self._pending[sid]
            while len(self._pending) > self.MAX_PENDING:
                self._pending.popitem(last=False)
        return offer.to_dict()

    def _provision(self, args: dict[str, Any]) -> dict[str, Any]:
        """Step 5: open the owner's envelope, install the key and policy, seal them to storage."""
        session, envelope = _arg(args, "session_id", bytes), _arg(args, "envelope", bytes)
        with self._pending_lock:
            pending = self._pending.pop(session, None)
        if pending is None:
            raise ProvisioningFailed("provisioning failed")
        key = provision.accept(pending[1], envelope)
        try:
            policy = Policy.from_dict(dict(key.policy))
        except (TypeError, ValueError):
            raise ProvisioningFailed("provisioning failed") from None
        return {"key_id": self.keys.install(key.secret_key_bytes, policy)}

    def _provision_local(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.config.allow_local_provisioning:
            raise BadRequest("local provisioning is disabled; use attested provisioning")
        try:
            policy = Policy.from_dict(_opt(args, "policy", dict, {}))
        except (TypeError, ValueError):
            raise BadRequest("malformed policy") from None
        return {"key_id": self.keys.install(_arg(args, "secret", bytes), policy)}

    def _refresh(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        out = api.refresh(entry, _bytes_list(args, "batches"), max_bytes=self.config.max_frame)
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

    def _window(self, args: dict[str, Any]) -> dict[str, Any]:
        """The fields every per-step operation shares (a block window and its samples)."""
        return {"features": _arg(args, "features", dict), "first_block": _arg(args, "first_block", int),
                "start": _arg(args, "start", int), "stop": _arg(args, "stop", int),
                "max_bytes": self.config.max_frame}

    def _softmax_error(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        e, s, d = nonlinear.softmax_error(
            entry, _bytes_list(args, "z"), _arg(args, "y", bytes), **self._window(args),
            learning_rate=float(_arg(args, "learning_rate", (int, float))),
            level=_arg(args, "level", int), intercept=bool(_opt(args, "intercept", bool, False)),
            transposed=bool(_opt(args, "transposed", bool, False)))
        return {"e": e, "e_sum": s, "e_diag": d}

    def _mlp_hidden(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        a, a_err = nonlinear.mlp_hidden(
            entry, _bytes_list(args, "z"), **self._window(args),
            activation_name=_arg(args, "activation", str), n_classes=_arg(args, "n_classes", int))
        return {"a": a, "a_err": a_err}

    def _mlp_backward(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        d, s = nonlinear.mlp_backward(
            entry, _bytes_list(args, "p"), _bytes_list(args, "z"), **self._window(args),
            activation_name=_arg(args, "activation", str), level=_arg(args, "level", int),
            intercept=bool(_opt(args, "intercept", bool, False)))
        return {"delta": d, "delta_sum": s}

    def _evaluate(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        metrics = _arg(args, "metrics", list)
        if not all(isinstance(m, str) for m in metrics):
            raise BadRequest("request field 'metrics' must hold names")
        return api.evaluate(entry, _arg(args, "model", dict), _arg(args, "features", bytes),
                            _arg(args, "labels", bytes), metrics=metrics,
                            max_bytes=self.config.max_frame)

    def _compare(self, args: dict[str, Any]) -> dict[str, Any]:
        entry = self.keys.get(args.get("key_id"))
        return api.compare(entry, _arg(args, "candidate", dict), _arg(args, "current", dict),
                           _arg(args, "features", bytes), _arg(args, "labels", bytes),
                           metric=_opt(args, "metric", str, "log_loss"),
                           with_metrics=_opt(args, "with_metrics", bool, False),
                           max_bytes=self.config.max_frame)


def _lock_state_dir(state_dir: Path) -> int:
    """An exclusive, non-blocking lock on ``state_dir/enclave.lock``; the fd holds it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    fd = os.open(state_dir / "enclave.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StateDirLocked("another enclave process serves this state directory") from None
    return fd


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
    enclave = enclave if enclave is not None else Enclave(config)  # takes the state-dir lock first
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    old = os.umask(0o177)  # only the socket itself is made under the owner-only umask
    try:
        server = _Server(str(path), enclave)
    except BaseException:
        enclave.close()
        raise
    finally:
        os.umask(old)
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
        enclave.close()

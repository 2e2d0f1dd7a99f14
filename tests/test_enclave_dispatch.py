"""The enclave's request dispatch, in-process: operation names, argument types, error replies.

Fast unit tests of ``Enclave.handle`` and the provisioning sessions it keeps
(``cipherloop/enclave/server.py``), on the simulated platform with real keys; the same
requests over the real socket to the real process are in ``test_enclave.py``.
"""

from __future__ import annotations

import select
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cipherloop.ckks import CiphertextBatch, Replicated, SecretContext
from cipherloop.enclave import framing
from cipherloop.enclave.framing import recv_frame, send_frame
from cipherloop.enclave.keystore import KeyEntry, KeyStore
from cipherloop.enclave.policy import Policy
from cipherloop.enclave.server import Enclave, EnclaveConfig, _Server
from cipherloop.errors import EnclaveError, ProvisioningFailed


@pytest.fixture
def enclave(tmp_path: Path) -> Enclave:
    """The enclave's dispatch, in this process, on the simulated platform."""
    return Enclave(EnclaveConfig(socket_path=tmp_path / "e.sock", state_dir=tmp_path / "state"))


def _error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False and "result" not in reply
    return reply["error"]["type"], reply["error"]["message"]


@pytest.mark.parametrize("msg", [{"op": "nope"}, {"op": 5}, {}, {"op": None}, {"op": ["hello"]}])
def test_unknown_operation(enclave: Enclave, msg: dict[str, Any]) -> None:
    assert _error(enclave.handle(msg)) == ("BadRequest", "unknown operation")


@pytest.mark.parametrize("args", [[1], "x", 3, b"args"])
def test_args_must_be_a_map(enclave: Enclave, args: Any) -> None:
    assert _error(enclave.handle({"op": "hello", "args": args})) == (
        "BadRequest", "request args must be a map")


def test_hello_answers_without_args(enclave: Enclave) -> None:
    reply = enclave.handle({"op": "hello"})
    assert reply["ok"] is True
    result = reply["result"]
    assert result["protocol"] == framing.PROTOCOL
    assert result["platform"] == "sim"
    assert result["keys"] == []
    assert result["measurement"] == enclave.platform.measurement().hex()


def test_a_refusal_carries_its_type_and_message(enclave: Enclave) -> None:
    reply = enclave.handle({"op": "refresh", "args": {"key_id": "0" * 32, "batches": []}})
    assert _error(reply) == ("UnknownKey", "no key with this id is provisioned")


def test_an_unexpected_crash_is_an_opaque_internal_error(tmp_path: Path) -> None:
    class Exploding(KeyStore):
        def get(self, key_id: object) -> KeyEntry:
            raise RuntimeError(f"decrypted value 0.73 for {key_id!r}")

    enclave = Enclave(EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st"),
                      keys=Exploding())
    reply = enclave.handle({"op": "refresh", "args": {"key_id": "k", "batches": []}})
    assert _error(reply) == ("EnclaveError", "internal error")


def test_local_provisioning_is_off_unless_configured(tmp_path: Path, small_key: SecretContext) -> None:
    off = Enclave(EnclaveConfig(socket_path=tmp_path / "a", state_dir=tmp_path / "sa"))
    msg = {"op": "provision_local", "args": {"secret": small_key.export_secret()}}
    assert _error(off.handle(msg))[0] == "BadRequest"
    assert off.keys.key_ids() == []
    on = Enclave(EnclaveConfig(socket_path=tmp_path / "b", state_dir=tmp_path / "sb",
                               allow_local_provisioning=True))
    reply = on.handle({"op": "provision_local",
                       "args": {"secret": small_key.export_secret(), "policy": {"min_samples": 3}}})
    assert reply == {"ok": True, "result": {"key_id": small_key.key_id}}
    assert on.keys.get(small_key.key_id).policy.min_samples == 3
    assert on.handle({"op": "hello"})["result"]["keys"] == [small_key.key_id]
    bad = on.handle({"op": "provision_local",
                     "args": {"secret": small_key.export_secret(), "policy": {"scores": True}}})
    assert _error(bad) == ("BadRequest", "malformed policy")


@pytest.mark.parametrize(("args", "field"), [
    ({"key_id": "k"}, "batches"),                     # missing
    ({"key_id": "k", "batches": b"x"}, "batches"),    # wrong type
    ({"key_id": "k", "batches": ["x"]}, "batches"),  # a list of something else
])
def test_request_fields_are_type_checked_by_name(tmp_path: Path, small_key: SecretContext,
                                                  args: dict[str, Any], field: str) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    enclave = Enclave(EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st"), keys=store)
    args = {**args, "key_id": small_key.key_id}
    got = _error(enclave.handle({"op": "refresh", "args": args}))
    assert got[0] == "BadRequest" and got[1].startswith(f"request field {field!r}")


def test_optional_fields_take_their_default_when_absent_or_none(tmp_path: Path,
                                                                small_key: SecretContext) -> None:
    store = KeyStore()
    store.install(small_key.export_secret(), Policy())
    enclave = Enclave(EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st"), keys=store)
    layout = Replicated(4, 4, small_key.params.slots).describe()
    batch = CiphertextBatch.of(small_key, [small_key.encrypt(np.ones(4), level=0)], layout).to_bytes()
    for extra in ({}, {"level": None}):
        reply = enclave.handle({"op": "refresh",
                                "args": {"key_id": small_key.key_id, "batches": [batch], **extra}})
        assert reply["ok"] is True, reply
        (out,) = reply["result"]["batches"]
        (fresh,) = CiphertextBatch.from_bytes(out).open(small_key, count=1)
        assert fresh.level == small_key.params.top_level  # the default: back to the top level


@pytest.mark.parametrize(("nonce", "session"), [(bytes(31), bytes(16)), (bytes(32), bytes(17)),
                                                (bytes(33), bytes(16)), (bytes(32), b"")])
def test_attest_checks_the_challenge_lengths(enclave: Enclave, nonce: bytes, session: bytes) -> None:
    reply = enclave.handle({"op": "attest", "args": {"nonce": nonce, "session_id": session}})
    assert _error(reply) == ("BadRequest", "nonce must be 32 bytes and session_id 16 bytes")


def test_attest_answers_a_well_formed_challenge(enclave: Enclave) -> None:
    reply = enclave.handle({"op": "attest", "args": {"nonce": bytes(32), "session_id": bytes(16)}})
    assert reply["ok"] is True
    assert reply["result"]["session_id"] == bytes(16)
    assert len(reply["result"]["public_key"]) == 32


def test_pending_challenges_are_bounded_oldest_first(enclave: Enclave) -> None:
    assert Enclave.MAX_PENDING == 1024
    sessions = [i.to_bytes(16, "big") for i in range(Enclave.MAX_PENDING + 2)]
    for n, s in enumerate(sessions, start=1):
        assert enclave.handle({"op": "attest", "args": {"nonce": bytes(32), "session_id": s}})["ok"]
        assert list(enclave._pending) == sessions[max(0, n - Enclave.MAX_PENDING):n]
    # The oldest were dropped: an envelope for one finds no session.
    oldest = enclave.handle({"op": "provision", "args": {"session_id": sessions[0], "envelope": b"x"}})
    assert _error(oldest) == ("ProvisioningFailed", "provisioning failed")


def test_a_session_is_used_up_by_one_envelope(enclave: Enclave) -> None:
    enclave.handle({"op": "attest", "args": {"nonce": bytes(32), "session_id": bytes(16)}})
    assert len(enclave._pending) == 1
    first = enclave.handle({"op": "provision", "args": {"session_id": bytes(16), "envelope": b"x"}})
    assert _error(first)[0] == "ProvisioningFailed"
    assert len(enclave._pending) == 0


def test_provisioning_failure_is_its_own_class() -> None:
    assert issubclass(ProvisioningFailed, Exception)
    assert not issubclass(ProvisioningFailed, EnclaveError)


class _InProcessLink:
    """The owner's attest/provision pair, answered by ``Enclave.handle`` in this process."""

    def __init__(self, enclave: Enclave) -> None:
        self.enclave = enclave

    def attest(self, nonce: bytes, session_id: bytes) -> dict[str, Any]:
        reply = self.enclave.handle({"op": "attest", "args": {"nonce": nonce, "session_id": session_id}})
        assert reply["ok"], reply
        return dict(reply["result"])

    def provision(self, session_id: bytes, envelope: bytes) -> str:
        reply = self.enclave.handle({"op": "provision",
                                     "args": {"session_id": session_id, "envelope": envelope}})
        assert reply["ok"], reply
        return str(reply["result"]["key_id"])


def _provision(enclave: Enclave, key: SecretContext, policy: dict[str, Any]) -> str:
    from cipherloop.client.provisioning import provision, simulated_policy

    verified = provision(_InProcessLink(enclave), key, simulated_policy(enclave.config.state_dir),
                         policy=policy, quiet_simulation=True)
    assert verified.simulated
    return key.key_id


def test_attested_provisioning_installs_and_seals_the_key(tmp_path: Path,
                                                          small_key: SecretContext) -> None:
    config = EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st")
    enclave = Enclave(config)
    _provision(enclave, small_key, {"min_samples": 21, "release": ["accuracy"]})
    entry = enclave.keys.get(small_key.key_id)
    assert (entry.policy.min_samples, entry.policy.release) == (21, ("accuracy",))
    sealed = config.sealed_dir / f"{small_key.key_id}.sealed"
    assert sealed.is_file()
    assert small_key.export_secret() not in sealed.read_bytes()
    assert enclave._pending == {}  # the session is used up

    enclave.close()  # one enclave per state directory at a time
    restarted = Enclave(config)  # same code, same state: serves without the owner
    assert restarted.keys.key_ids() == []
    assert restarted.restore_sealed() == 1
    assert restarted.keys.get(small_key.key_id).policy.min_samples == 21


def test_a_sealed_file_that_does_not_open_is_skipped(tmp_path: Path, small_key: SecretContext,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    config = EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st")
    first = Enclave(config)
    _provision(first, small_key, {})
    first.close()
    (config.sealed_dir / "zz-garbage.sealed").write_bytes(b"not sealed")
    (config.sealed_dir / "ignored.txt").write_bytes(b"not a sealed key at all")
    restarted = Enclave(config)
    assert restarted.restore_sealed() == 1
    assert restarted.keys.key_ids() == [small_key.key_id]
    assert "zz-garbage.sealed does not unseal" in caplog.text


def test_no_sealed_keys_restores_nothing(enclave: Enclave) -> None:
    assert enclave.restore_sealed() == 0


def test_an_envelope_with_a_malformed_policy_installs_nothing(tmp_path: Path,
                                                             small_key: SecretContext) -> None:
    config = EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st")
    enclave = Enclave(config)
    with pytest.raises(AssertionError, match="ProvisioningFailed"):
        _provision(enclave, small_key, {"scores": True})
    assert enclave.keys.key_ids() == []
    assert not list(config.sealed_dir.glob("*.sealed"))


# ------------------------------------------------------------- the socket server
class _RecordingServer(_Server):
    """The enclave's server in this process, noting handler crashes and finished connections."""

    def __init__(self, path: str, enclave: Enclave) -> None:
        super().__init__(path, enclave)
        self.crashes: list[str] = []
        self.finished = threading.Semaphore(0)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        self.crashes.append(repr(sys.exc_info()[1]))

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.finished.release()


@pytest.fixture
def served() -> Iterator[tuple[Path, _RecordingServer]]:
    short = Path(tempfile.mkdtemp(prefix="cl-"))  # AF_UNIX paths are short
    enclave = Enclave(EnclaveConfig(socket_path=short / "e.sock", state_dir=short / "st"))
    server = _RecordingServer(str(short / "e.sock"), enclave)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield short / "e.sock", server
    server.shutdown()
    server.server_close()
    thread.join()
    import shutil

    shutil.rmtree(short, ignore_errors=True)


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def test_replies_echo_integer_request_ids_only(served: tuple[Path, _RecordingServer]) -> None:
    path, _ = served
    with _connect(path) as sock:
        for sent, echoed in ((7, 7), (123456, 123456), ("7", None), (None, None), ([1], None)):
            send_frame(sock, {"op": "hello", "id": sent})
            reply = recv_frame(sock)
            assert reply["ok"] is True and reply["id"] == echoed
        send_frame(sock, {"op": "hello"})
        assert recv_frame(sock)["id"] is None


def test_a_client_that_hangs_up_before_its_reply_crashes_nothing(
        served: tuple[Path, _RecordingServer], monkeypatch: pytest.MonkeyPatch) -> None:
    path, server = served
    hung_up = threading.Event()
    real = server.enclave.handle

    def after_the_hang_up(msg: dict[str, Any]) -> dict[str, Any]:
        hung_up.wait(30)  # the reply is written only once the client is gone: EPIPE
        return real(msg)

    monkeypatch.setattr(server.enclave, "handle", after_the_hang_up)
    with _connect(path) as sock:
        send_frame(sock, {"op": "hello", "id": 1})
    hung_up.set()
    assert server.finished.acquire(timeout=30)
    assert server.crashes == []
    monkeypatch.setattr(server.enclave, "handle", real)
    with _connect(path) as sock:  # and it keeps serving
        send_frame(sock, {"op": "hello", "id": 3})
        assert recv_frame(sock)["id"] == 3


def test_a_client_that_leaves_its_reply_unread_crashes_nothing(
        served: tuple[Path, _RecordingServer]) -> None:
    path, server = served
    with _connect(path) as sock:
        send_frame(sock, {"op": "hello", "id": 1})
        assert select.select([sock], [], [], 30)[0]  # the reply has arrived...
    # ...and was closed unread: the server's next read fails with ECONNRESET.
    assert server.finished.acquire(timeout=30)
    assert server.crashes == []

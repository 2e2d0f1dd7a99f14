"""The enclave's small parts, in-process: policy, release budget, key store, framing, dispatch.

These run in milliseconds with real keys and real sockets, so the mutation
tests (``make mutants``) can afford them for every mutant. Release behaviour
of the operations themselves (what ``evaluate``/``compare`` let out) is tested
against the real enclave process in ``test_enclave.py``.
"""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
import pytest

from cipherloop.ckks import CiphertextBatch, CkksParams, Replicated, SecretContext
from cipherloop.enclave import framing
from cipherloop.enclave.framing import PeerClosed, recv_frame, send_frame
from cipherloop.enclave.keystore import KeyEntry, KeyStore
from cipherloop.enclave.policy import METRICS, RESOLUTION, Policy, ReleaseBudget, coarse
from cipherloop.enclave.server import Enclave, EnclaveConfig
from cipherloop.errors import EnclaveError, PolicyViolation, ProtocolError, ProvisioningFailed


@pytest.fixture(scope="module")
def key() -> SecretContext:
    """A real but small CKKS key (N=4096)."""
    return SecretContext.generate(CkksParams(4096, (40, 20, 40), 20))


class Clock:
    """Injected time for the release budget."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------ policy
def test_policy_defaults_are_the_documented_ones() -> None:
    p = Policy()
    assert p.release == METRICS == ("accuracy", "log_loss")
    assert (p.allow_decision, p.min_samples, p.max_releases_per_hour) == (True, 16, 600)
    assert (p.max_learning_rate, p.clip) == (100.0, 16.0)


@pytest.mark.parametrize("kw", [
    {"release": ("accuracy", "auc")},
    {"release": ("raw_scores",)},
    {"min_samples": 0},
    {"min_samples": -5},
    {"max_releases_per_hour": -1},
    {"max_learning_rate": 0.0},
    {"max_learning_rate": -1.0},
    {"max_learning_rate": math.inf},
    {"max_learning_rate": math.nan},
    {"clip": 0.0},
    {"clip": -1.0},
    {"clip": 64.001},
    {"clip": math.nan},
])
def test_policy_refuses_out_of_range_settings(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Policy(**kw)


@pytest.mark.parametrize("kw", [
    {"release": ()},
    {"release": ("accuracy",)},
    {"release": ("log_loss",)},
    {"min_samples": 1},
    {"max_releases_per_hour": 0},
    {"max_learning_rate": 1e-9},
    {"max_learning_rate": 1e300},
    {"clip": 64.0},
    {"clip": 1e-6},
])
def test_policy_accepts_the_edges_of_each_range(kw: dict[str, Any]) -> None:
    p = Policy(**kw)
    assert all(getattr(p, k) == v for k, v in kw.items())


def test_policy_round_trips_through_its_wire_form() -> None:
    p = Policy(release=("log_loss",), allow_decision=False, min_samples=40,
               max_releases_per_hour=7, max_learning_rate=2.5, clip=8.0)
    doc = p.to_dict()
    assert doc == {"release": ["log_loss"], "allow_decision": False, "min_samples": 40,
                   "max_releases_per_hour": 7, "max_learning_rate": 2.5, "clip": 8.0}
    assert Policy.from_dict(cbor2.loads(cbor2.dumps(doc))) == p
    assert Policy.from_dict({}) == Policy()
    assert Policy.from_dict({"release": ["accuracy"]}).release == ("accuracy",)


@pytest.mark.parametrize("doc", [
    {"release": ["accuracy"], "extra": 1},
    {"min_samples": 3, "scores": True},
    ["release"],
    "release",
    None,
])
def test_policy_wire_form_refuses_unknown_fields_and_non_maps(doc: Any) -> None:
    with pytest.raises(ValueError, match="malformed policy"):
        Policy.from_dict(doc)


def test_policy_wire_form_refuses_a_release_it_does_not_know() -> None:
    with pytest.raises(ValueError):
        Policy.from_dict({"release": ["accuracy", "z"]})


# ---------------------------------------------------------------- release budget
def test_budget_allows_exactly_per_hour_releases_in_an_hour() -> None:
    clock = Clock()
    budget = ReleaseBudget(3, clock)
    for _ in range(3):
        budget.spend()
        clock.now += 1.0
    with pytest.raises(PolicyViolation, match="budget"):
        budget.spend()


def test_budget_window_slides_after_exactly_one_hour() -> None:
    clock = Clock(5000.0)
    budget = ReleaseBudget(2, clock)
    budget.spend()                      # t = 5000
    clock.now = 5000.0 + 1800.0
    budget.spend()                      # t = 6800
    clock.now = 5000.0 + 3599.999
    with pytest.raises(PolicyViolation):
        budget.spend()                  # the first release is still inside the hour
    clock.now = 5000.0 + 3600.0
    budget.spend()                      # the first one has left the window
    with pytest.raises(PolicyViolation):
        budget.spend()                  # the second (t = 6800) and third still count
    clock.now = 6800.0 + 3600.0
    budget.spend()


def test_a_refused_release_does_not_use_up_the_budget() -> None:
    clock = Clock()
    budget = ReleaseBudget(1, clock)
    budget.spend()
    for _ in range(5):
        clock.now += 600.0
        with pytest.raises(PolicyViolation):
            budget.spend()
    clock.now = 1000.0 + 3600.0         # an hour after the only release that happened
    budget.spend()


def test_a_zero_budget_refuses_the_first_release() -> None:
    with pytest.raises(PolicyViolation):
        ReleaseBudget(0, Clock()).spend()


def test_budget_counts_every_thread_once() -> None:
    budget = ReleaseBudget(50, Clock())
    refused: list[int] = []

    def spend() -> None:
        for _ in range(10):
            try:
                budget.spend()
            except PolicyViolation:
                refused.append(1)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(refused) == 80 - 50


def test_budget_uses_the_monotonic_clock_by_default() -> None:
    assert ReleaseBudget(1).clock is time.monotonic


# ----------------------------------------------------------------------- rounding
@pytest.mark.parametrize(("value", "released"), [
    (0.12349, 0.123),
    (0.12351, 0.124),
    (0.9996, 1.0),
    (0.0004, 0.0),
    (-0.0126, -0.013),
    (0.6931471805599453, 0.693),
    (12.34567, 12.346),
    (1.0, 1.0),
])
def test_coarse_rounds_to_the_resolution(value: float, released: float) -> None:
    assert RESOLUTION == 1e-3
    assert coarse(value) == released
    assert round(coarse(value), 3) == coarse(value)


# --------------------------------------------------------------------- key store
def test_key_store_installs_under_the_key_id_with_its_policy(key: SecretContext) -> None:
    clock = Clock()
    store = KeyStore(clock=clock)
    policy = Policy(max_releases_per_hour=2)
    assert store.install(key.export_secret(), policy) == key.key_id
    entry = store.get(key.key_id)
    assert entry.policy is policy
    assert entry.context.key_id == key.key_id
    assert entry.budget.per_hour == 2
    assert entry.budget.clock is clock
    assert store.key_ids() == [key.key_id]


def test_key_store_without_a_clock_uses_the_budget_default(key: SecretContext) -> None:
    store = KeyStore()
    store.install(key.export_secret(), Policy())
    assert store.get(key.key_id).budget.clock is time.monotonic


def test_each_key_has_its_own_budget(key: SecretContext) -> None:
    other = SecretContext.generate(CkksParams(4096, (40, 20, 40), 20))
    store = KeyStore(clock=Clock())
    store.install(key.export_secret(), Policy(max_releases_per_hour=1))
    store.install(other.export_secret(), Policy(max_releases_per_hour=1))
    assert store.key_ids() == sorted([key.key_id, other.key_id])
    store.get(key.key_id).budget.spend()
    store.get(other.key_id).budget.spend()
    with pytest.raises(PolicyViolation):
        store.get(key.key_id).budget.spend()


def test_reinstalling_a_key_replaces_its_policy(key: SecretContext) -> None:
    store = KeyStore()
    store.install(key.export_secret(), Policy(min_samples=5))
    store.install(key.export_secret(), Policy(min_samples=9))
    assert store.key_ids() == [key.key_id]
    assert store.get(key.key_id).policy.min_samples == 9


@pytest.mark.parametrize("secret", [b"", b"not a key", cbor2.dumps({"format": "x"})])
def test_key_store_refuses_unloadable_secrets_without_detail(secret: bytes) -> None:
    store = KeyStore()
    with pytest.raises(EnclaveError) as info:
        store.install(secret, Policy())
    assert type(info.value) is EnclaveError
    assert str(info.value) == "secret key material is not loadable"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert store.key_ids() == []


@pytest.mark.parametrize("key_id", ["0" * 32, None, 7, b"abc", ["x"]])
def test_key_store_refuses_unknown_or_non_string_ids(key: SecretContext, key_id: object) -> None:
    store = KeyStore()
    store.install(key.export_secret(), Policy())
    with pytest.raises(EnclaveError, match="no key with this id") as info:
        store.get(key_id)
    assert type(info.value) is EnclaveError


def test_key_entry_repr_hides_the_secret(key: SecretContext) -> None:
    store = KeyStore()
    store.install(key.export_secret(), Policy())
    entry = store.get(key.key_id)
    assert isinstance(entry, KeyEntry)
    assert repr(entry) == f"KeyEntry(key_id={key.key_id!r}, secret=<redacted>)"


# ------------------------------------------------------------------------ framing
@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_frame_is_a_big_endian_length_and_a_cbor_map(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    msg = {"op": "hello", "id": 3, "args": {"blob": b"\x00\x01"}}
    send_frame(a, msg)
    body = cbor2.dumps(msg)
    raw = b.recv(4 + len(body) + 10)
    assert raw == struct.pack(">I", len(body)) + body
    assert framing.PROTOCOL == "cipherloop-enclave/v1"
    assert framing.DEFAULT_MAX_FRAME == 256 * 1024 * 1024


def test_frames_round_trip_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, {"n": 1})
    send_frame(a, {"n": 2, "b": b"x" * 100})
    assert recv_frame(b) == {"n": 1}
    assert recv_frame(b) == {"n": 2, "b": b"x" * 100}


def test_a_frame_larger_than_the_socket_buffer_arrives_whole(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    msg = {"blob": bytes(range(256)) * 8192}  # 2 MiB: many partial reads
    sender = threading.Thread(target=send_frame, args=(a, msg))
    sender.start()
    got = recv_frame(b)
    sender.join()
    assert got == msg


def test_frame_at_the_limit_is_read_and_one_over_is_refused_unread(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    body = cbor2.dumps({"k": b"v" * 20})
    a.sendall(struct.pack(">I", len(body)) + body)
    assert recv_frame(b, max_bytes=len(body)) == {"k": b"v" * 20}
    a.sendall(struct.pack(">I", len(body) + 1))  # no body follows: refused before reading it
    with pytest.raises(ProtocolError, match="exceeds") as info:
        recv_frame(b, max_bytes=len(body))
    assert type(info.value) is ProtocolError


def test_peer_closing_between_frames_is_peer_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    with pytest.raises(PeerClosed):
        recv_frame(b)


@pytest.mark.parametrize("sent", [
    b"\x00\x00",                          # half a header
    struct.pack(">I", 10) + b"\xa1\x61",  # a header, then part of the body
])
def test_truncated_frame_is_a_protocol_error_not_a_clean_close(
        pair: tuple[socket.socket, socket.socket], sent: bytes) -> None:
    a, b = pair
    a.sendall(sent)
    a.close()
    with pytest.raises(ProtocolError, match="truncated") as info:
        recv_frame(b)
    assert type(info.value) is ProtocolError


@pytest.mark.parametrize(("body", "match"), [
    (b"\xff\xff\xff", "not valid CBOR"),
    (cbor2.dumps([1, 2]), "not a map"),
    (cbor2.dumps("op"), "not a map"),
])
def test_malformed_body_is_a_protocol_error(pair: tuple[socket.socket, socket.socket],
                                            body: bytes, match: str) -> None:
    a, b = pair
    a.sendall(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError, match=match) as info:
        recv_frame(b)
    assert info.value.__cause__ is None and info.value.__suppress_context__ in (True, False)


def test_empty_map_frame_is_read(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_frame(a, {})
    assert recv_frame(b, max_bytes=1) == {}


# ----------------------------------------------------------------------- dispatch
@pytest.fixture
def enclave(tmp_path: Path) -> Enclave:
    """The enclave's dispatch, in this process, on the simulated platform."""
    return Enclave(EnclaveConfig(socket_path=tmp_path / "e.sock", state_dir=tmp_path / "state"))


def _error(reply: dict[str, Any]) -> tuple[str, str]:
    assert reply["ok"] is False and "result" not in reply
    return reply["error"]["type"], reply["error"]["message"]


@pytest.mark.parametrize("msg", [{"op": "nope"}, {"op": 5}, {}, {"op": None}, {"op": ["hello"]}])
def test_unknown_operation(enclave: Enclave, msg: dict[str, Any]) -> None:
    assert _error(enclave.handle(msg)) == ("EnclaveError", "unknown operation")


@pytest.mark.parametrize("args", [[1], "x", 3, b"args"])
def test_args_must_be_a_map(enclave: Enclave, args: Any) -> None:
    assert _error(enclave.handle({"op": "hello", "args": args})) == (
        "EnclaveError", "request args must be a map")


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
    assert _error(reply) == ("EnclaveError", "no key with this id is provisioned")


def test_an_unexpected_crash_is_an_opaque_internal_error(tmp_path: Path) -> None:
    class Exploding(KeyStore):
        def get(self, key_id: object) -> KeyEntry:
            raise RuntimeError(f"decrypted value 0.73 for {key_id!r}")

    enclave = Enclave(EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st"),
                      keys=Exploding())
    reply = enclave.handle({"op": "refresh", "args": {"key_id": "k", "batches": []}})
    assert _error(reply) == ("EnclaveError", "internal error")


def test_local_provisioning_is_off_unless_configured(tmp_path: Path, key: SecretContext) -> None:
    off = Enclave(EnclaveConfig(socket_path=tmp_path / "a", state_dir=tmp_path / "sa"))
    msg = {"op": "provision_local", "args": {"secret": key.export_secret()}}
    assert _error(off.handle(msg))[0] == "EnclaveError"
    assert off.keys.key_ids() == []
    on = Enclave(EnclaveConfig(socket_path=tmp_path / "b", state_dir=tmp_path / "sb",
                               allow_local_provisioning=True))
    reply = on.handle({"op": "provision_local",
                       "args": {"secret": key.export_secret(), "policy": {"min_samples": 3}}})
    assert reply == {"ok": True, "result": {"key_id": key.key_id}}
    assert on.keys.get(key.key_id).policy.min_samples == 3
    assert on.handle({"op": "hello"})["result"]["keys"] == [key.key_id]
    bad = on.handle({"op": "provision_local",
                     "args": {"secret": key.export_secret(), "policy": {"scores": True}}})
    assert _error(bad) == ("EnclaveError", "malformed policy")


@pytest.mark.parametrize(("args", "field"), [
    ({"key_id": "k"}, "batches"),                     # missing
    ({"key_id": "k", "batches": b"x"}, "batches"),    # wrong type
    ({"key_id": "k", "batches": [], "level": "1"}, "level"),
    ({"key_id": "k", "batches": [], "level": True}, "level"),  # a bool is no int
    ({"key_id": "k", "batches": [], "level": 1.0}, "level"),
])
def test_request_fields_are_type_checked_by_name(tmp_path: Path, key: SecretContext,
                                                  args: dict[str, Any], field: str) -> None:
    store = KeyStore()
    store.install(key.export_secret(), Policy())
    enclave = Enclave(EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st"), keys=store)
    args = {**args, "key_id": key.key_id}
    assert _error(enclave.handle({"op": "refresh", "args": args})) == (
        "EnclaveError", f"request field {field!r} is missing or has the wrong type")


def test_optional_fields_take_their_default_when_absent_or_none(tmp_path: Path,
                                                                key: SecretContext) -> None:
    store = KeyStore()
    store.install(key.export_secret(), Policy())
    enclave = Enclave(EnclaveConfig(socket_path=tmp_path / "s", state_dir=tmp_path / "st"), keys=store)
    layout = Replicated(4, 4, key.params.slots).describe()
    batch = CiphertextBatch.of(key, [key.encrypt(np.ones(4), level=0)], layout).to_bytes()
    for extra in ({}, {"level": None}):
        reply = enclave.handle({"op": "refresh",
                                "args": {"key_id": key.key_id, "batches": [batch], **extra}})
        assert reply["ok"] is True, reply
        (out,) = reply["result"]["batches"]
        (fresh,) = CiphertextBatch.from_bytes(out).open(key, count=1)
        assert fresh.level == key.params.top_level  # the default: back to the top level


@pytest.mark.parametrize(("nonce", "session"), [(bytes(31), bytes(16)), (bytes(32), bytes(17)),
                                                (bytes(33), bytes(16)), (bytes(32), b"")])
def test_attest_checks_the_challenge_lengths(enclave: Enclave, nonce: bytes, session: bytes) -> None:
    reply = enclave.handle({"op": "attest", "args": {"nonce": nonce, "session_id": session}})
    assert _error(reply) == ("EnclaveError", "nonce must be 32 bytes and session_id 16 bytes")


def test_attest_answers_a_well_formed_challenge(enclave: Enclave) -> None:
    reply = enclave.handle({"op": "attest", "args": {"nonce": bytes(32), "session_id": bytes(16)}})
    assert reply["ok"] is True
    assert reply["result"]["session_id"] == bytes(16)
    assert len(reply["result"]["public_key"]) == 32


def test_pending_challenges_are_bounded_oldest_first(enclave: Enclave) -> None:
    sessions = [i.to_bytes(16, "big") for i in range(Enclave.MAX_PENDING + 1)]
    for s in sessions:
        assert enclave.handle({"op": "attest", "args": {"nonce": bytes(32), "session_id": s}})["ok"]
    # The oldest was dropped: its envelope finds no session; the newest still has one.
    oldest = enclave.handle({"op": "provision", "args": {"session_id": sessions[0], "envelope": b"x"}})
    assert _error(oldest) == ("ProvisioningFailed", "provisioning failed")
    second = enclave.handle({"op": "provision", "args": {"session_id": sessions[1], "envelope": b"x"}})
    assert _error(second)[0] == "ProvisioningFailed"
    assert Enclave.MAX_PENDING == 16


def test_a_session_is_used_up_by_one_envelope(enclave: Enclave) -> None:
    enclave.handle({"op": "attest", "args": {"nonce": bytes(32), "session_id": bytes(16)}})
    assert len(enclave._pending) == 1
    first = enclave.handle({"op": "provision", "args": {"session_id": bytes(16), "envelope": b"x"}})
    assert _error(first)[0] == "ProvisioningFailed"
    assert len(enclave._pending) == 0


def test_provisioning_failure_is_its_own_class() -> None:
    assert issubclass(ProvisioningFailed, Exception)
    assert not issubclass(ProvisioningFailed, EnclaveError)

"""The enclave process: narrow operations, strict validation, keeps serving after bad input."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import cbor2
import numpy as np
import pytest
from enclavekit import logits_batch, provision_sim

from cipherloop.ckks import CiphertextBatch, Diagonals, PublicContext, SecretContext, preset
from cipherloop.client.data import encrypt_dataset, encrypt_model
from cipherloop.errors import (
    BadRequest,
    EnclaveError,
    EnclaveUnavailable,
    InvalidCiphertext,
    ParameterMismatch,
    ProvisioningFailed,
    ShapeError,
)
from cipherloop.learn import EnclaveProcess, RefineConfig, refine
from cipherloop.learn.enclave_client import EnclaveClient

SLOTS = 4096


def _raw_socket(proc: EnclaveProcess) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(proc.socket_path))
    return s


def _read_reply(s: socket.socket) -> dict[str, object]:
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        assert chunk, "connection closed without a reply"
        head += chunk
    (n,) = struct.unpack(">I", head)
    body = b""
    while len(body) < n:
        body += s.recv(n - len(body))
    return dict(cbor2.loads(body))


def _still_serving(proc: EnclaveProcess) -> bool:
    return EnclaveClient(proc.socket_path, timeout=10).hello()["protocol"] == "cipherloop-enclave/v1"


def _batch(ctx: PublicContext | SecretContext, values: list[np.ndarray], layout: dict[str, object],
           level: int | None = None) -> bytes:
    return CiphertextBatch.of(ctx, [ctx.encrypt(v, level=level) for v in values], layout).to_bytes()


# -- frames ---------------------------------------------------------------------
def test_garbage_frame_gets_an_error_and_the_enclave_keeps_serving(enclave: EnclaveProcess) -> None:
    s = _raw_socket(enclave)
    body = b"\xff\xfe not cbor at all"
    s.sendall(struct.pack(">I", len(body)) + body)
    reply = _read_reply(s)
    assert reply["ok"] is False and reply["error"]["type"] == "ProtocolError"  # type: ignore[index]
    s.close()
    assert _still_serving(enclave)


def test_truncated_frame_then_hangup(enclave: EnclaveProcess) -> None:
    s = _raw_socket(enclave)
    s.sendall(struct.pack(">I", 1000) + b"x" * 10)
    s.close()
    assert _still_serving(enclave)


def test_oversized_frame_is_refused_before_reading_it(enclave: EnclaveProcess) -> None:
    s = _raw_socket(enclave)
    s.sendall(struct.pack(">I", 2**31))
    reply = _read_reply(s)
    assert "exceeds" in reply["error"]["message"]  # type: ignore[index]
    s.close()
    assert _still_serving(enclave)


def test_frame_that_is_not_a_map(enclave: EnclaveProcess) -> None:
    s = _raw_socket(enclave)
    body = cbor2.dumps([1, 2, 3])
    s.sendall(struct.pack(">I", len(body)) + body)
    assert _read_reply(s)["ok"] is False
    s.close()
    assert _still_serving(enclave)


def test_unknown_operation_and_wrong_types_keep_the_connection(enclave: EnclaveProcess) -> None:
    client = EnclaveClient(enclave.socket_path, timeout=10)
    with pytest.raises(EnclaveError, match="unknown operation"):
        client.call("decrypt", key_id="x")  # there is no such thing
    with pytest.raises(EnclaveError, match="wrong type"):
        client.call("refresh", key_id=client.hello()["keys"][0], batches="nope")
    with pytest.raises(EnclaveError, match="no key"):
        client.call("refresh", key_id="not-a-key", batches=[b"x"])
    assert client.hello()["keys"]


# -- ciphertext identity and shapes -----------------------------------------------
def _error_args(ctx: PublicContext | SecretContext, n: int = 100, d: int = 8,
                **over: object) -> dict[str, object]:
    L = Diagonals.plan(n, d, SLOTS)
    samples = L.samples.describe()
    args: dict[str, object] = {
        "z": logits_batch(ctx, L.samples.pack(np.zeros(n)), samples),
        "y": _batch(ctx, L.samples.pack(np.ones(n)), samples, level=0),
        "features": L.describe(), "first_block": 0, "start": 0, "stop": n,
        "learning_rate": 0.5, "level": ctx.params.top_level, "intercept": True,
    }
    args.update(over)
    return args


def test_error_step_returns_only_ciphertexts(enclave: EnclaveProcess, owner_key: SecretContext,
                                             host_context: PublicContext) -> None:
    e_raw, s_raw = enclave.client.logistic_error(host_context.key_id, **_error_args(host_context))  # type: ignore[arg-type]
    e = CiphertextBatch.from_bytes(e_raw).open(owner_key)
    L = Diagonals.plan(100, 8, SLOTS)
    assert len(e) == L.n_blocks * L.giant
    # sigmoid(0) - 1 = -0.5, times 0.5 / 100 -> -0.0025 on the 100 samples, 0 on padding
    values = owner_key.decrypt(e[0])
    assert np.allclose(values[:100], -0.0025, atol=1e-6) and np.allclose(values[100:], 0, atol=1e-6)
    assert all(c.level == owner_key.params.top_level for c in e)  # the level asked for
    assert s_raw is not None
    (total_ct,) = CiphertextBatch.from_bytes(s_raw).open(owner_key)
    assert total_ct.level == owner_key.params.top_level - 1  # where the gradient lands
    assert total_ct.scale == owner_key.params.scale
    assert np.allclose(owner_key.decrypt(total_ct), -0.25, atol=1e-5)


@pytest.mark.parametrize("override,error", [
    ({"start": 50, "stop": 40}, ShapeError),
    ({"stop": 5000}, ShapeError),
    ({"first_block": 1}, ShapeError),
    ({"learning_rate": 1e9}, BadRequest),
    ({"learning_rate": float("nan")}, BadRequest),
    ({"level": 99}, BadRequest),
    ({"level": 0}, BadRequest),
    ({"level": 4}, BadRequest),  # top + 1: the special prime's level, never a data level
    ({"learning_rate": 0.0}, BadRequest),
    ({"learning_rate": -0.5}, BadRequest),
    ({"features": {"kind": "diagonals", "n_samples": 7}}, ShapeError),
    ({"z": b"\x00garbage"}, InvalidCiphertext),
])
def test_error_step_validates_before_decrypting(enclave: EnclaveProcess, host_context: PublicContext,
                                                override: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        enclave.client.logistic_error(host_context.key_id, **_error_args(host_context, **override))  # type: ignore[arg-type]
    assert _still_serving(enclave)


@pytest.mark.parametrize(("z_blocks", "y_blocks"), [(2, 1), (1, 2), (0, 0), (0, 1)])
def test_labels_of_another_block_count_are_refused(enclave: EnclaveProcess,
                                                   host_context: PublicContext,
                                                   z_blocks: int, y_blocks: int) -> None:
    L = Diagonals.plan(5000, 8, SLOTS)
    z = logits_batch(host_context, L.samples.pack(np.zeros(5000))[:z_blocks], L.samples.describe())
    y = _batch(host_context, L.samples.pack(np.ones(5000))[:y_blocks], L.samples.describe(),
               level=0)
    with pytest.raises(ShapeError, match="same, non-zero number of blocks"):
        enclave.client.logistic_error(host_context.key_id, **_error_args(  # type: ignore[arg-type]
            host_context, n=5000, z=z, y=y, stop=4096))


def test_error_step_over_two_blocks_at_the_largest_allowed_rate(
        enclave: EnclaveProcess, owner_key: SecretContext, host_context: PublicContext) -> None:
    L = Diagonals.plan(5000, 8, SLOTS)
    z = logits_batch(host_context, L.samples.pack(np.zeros(5000)), L.samples.describe())
    y = _batch(host_context, L.samples.pack(np.ones(5000)), L.samples.describe(), level=0)
    e_raw, _ = enclave.client.logistic_error(host_context.key_id, **_error_args(  # type: ignore[arg-type]
        host_context, n=5000, z=z, y=y, learning_rate=100.0))  # the policy's maximum, inclusive
    e = CiphertextBatch.from_bytes(e_raw).open(owner_key)
    assert len(e) == 2 * L.giant
    assert np.allclose(owner_key.decrypt(e[L.giant])[:5000 - 4096], -0.5 * 100.0 / 5000, atol=1e-5)


def test_wrong_shapes_are_refused(enclave: EnclaveProcess, host_context: PublicContext) -> None:
    other = Diagonals.plan(5000, 8, SLOTS).samples  # two blocks where one is expected
    z = logits_batch(host_context, other.pack(np.zeros(5000)), other.describe())
    with pytest.raises(ShapeError):
        enclave.client.logistic_error(host_context.key_id, **_error_args(host_context, z=z))  # type: ignore[arg-type]


def test_ciphertexts_under_another_key_or_parameters_are_refused(
        enclave: EnclaveProcess, host_context: PublicContext, other_key: SecretContext) -> None:
    with pytest.raises(ParameterMismatch, match="another key"):
        enclave.client.logistic_error(host_context.key_id, **_error_args(other_key))  # type: ignore[arg-type]
    foreign = SecretContext.generate(preset("n16384"))
    L = Diagonals.plan(100, 8, SLOTS)
    z = logits_batch(foreign, [np.zeros(10)], L.samples.describe())
    with pytest.raises(ParameterMismatch, match="parameters"):
        enclave.client.logistic_error(host_context.key_id, **_error_args(host_context, z=z))  # type: ignore[arg-type]
    assert _still_serving(enclave)


def test_refresh_returns_fresh_top_level_ciphertexts(enclave: EnclaveProcess, owner_key: SecretContext,
                                                    host_context: PublicContext) -> None:
    model = encrypt_model(host_context, np.arange(8.0), 1.5)
    spent = model.coef.times(1.0).times(1.0)
    raw = CiphertextBatch.of(host_context, [spent], model.layout.describe()).to_bytes()
    (out,) = enclave.client.refresh(host_context.key_id, [raw])
    fresh = CiphertextBatch.from_bytes(out).open(host_context)[0]
    assert fresh.level == host_context.params.top_level > spent.level
    assert np.allclose(model.layout.unpack(owner_key.decrypt(fresh)), np.arange(8.0), atol=1e-5)


def test_refresh_refuses_feature_layouts(enclave: EnclaveProcess, host_context: PublicContext) -> None:
    L = Diagonals.plan(10, 4, SLOTS)
    raw = _batch(host_context, L.pack(np.zeros((10, 4))), L.describe())
    with pytest.raises(ShapeError, match="refresh takes replicated vectors or sample blocks$"):
        enclave.client.refresh(host_context.key_id, [raw])


def test_unattested_key_hand_over_is_off_by_default(owner_key: SecretContext) -> None:
    with EnclaveProcess() as proc, pytest.raises(EnclaveError, match="disabled"):
        proc.client.provision_local(owner_key.export_secret())


def test_garbage_secret_is_refused_without_echo() -> None:
    secret = b"\x01\x02secret-bytes-that-must-not-echo"
    with EnclaveProcess(extra_args=["--allow-local-provisioning"]) as proc:
        with pytest.raises(EnclaveError) as info:
            proc.client.provision_local(secret)
        assert "secret-bytes" not in str(info.value)
        assert proc.client.hello()["keys"] == []


def test_envelope_for_an_unknown_session_is_refused(enclave: EnclaveProcess) -> None:
    with pytest.raises(ProvisioningFailed, match="provisioning failed"):
        enclave.client.provision(b"\x00" * 16, b"not an envelope")
    assert _still_serving(enclave)


def test_sealed_key_survives_a_restart(owner_key: SecretContext, host_context: PublicContext,
                                       tmp_path: Path) -> None:
    data, model = _tiny_problem(owner_key)
    with EnclaveProcess(state_dir=tmp_path) as proc:
        provision_sim(proc, owner_key)
    with EnclaveProcess(state_dir=tmp_path) as again:  # the owner is offline now
        assert again.client.hello()["keys"] == [owner_key.key_id]
        refine(model, [data], RefineConfig(epochs=1), context=host_context,  # type: ignore[list-item,arg-type]
               enclave=again.client)


# -- failure of the enclave itself ----------------------------------------------------------
def _tiny_problem(key: SecretContext) -> tuple[object, object]:
    rng = np.random.default_rng(4)
    X = rng.standard_normal((64, 4))
    y = (X[:, 0] > 0).astype(float)
    return encrypt_dataset(key, X, y), encrypt_model(key, np.zeros(4), 0.0)


def test_dead_enclave_is_a_clear_error_not_a_hang(owner_key: SecretContext) -> None:
    data, model = _tiny_problem(owner_key)
    proc = EnclaveProcess(timeout=30).start()
    try:
        provision_sim(proc, owner_key)
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGKILL)
        proc.proc.wait()
        t0 = time.monotonic()
        with pytest.raises(EnclaveUnavailable):
            refine(model, [data], RefineConfig(epochs=2), context=owner_key,  # type: ignore[list-item,arg-type]
                   enclave=proc.client)
        assert time.monotonic() - t0 < 20
    finally:
        proc.stop()


def test_hung_enclave_times_out(owner_key: SecretContext) -> None:
    data, model = _tiny_problem(owner_key)
    proc = EnclaveProcess(timeout=5).start()
    try:
        provision_sim(proc, owner_key)
        proc.client.timeout = 2
        proc.client.close()
        assert proc.proc is not None
        os.kill(proc.proc.pid, signal.SIGSTOP)
        with pytest.raises(EnclaveUnavailable, match="died or hung"):
            refine(model, [data], RefineConfig(epochs=1), context=owner_key,  # type: ignore[list-item,arg-type]
                   enclave=proc.client)
        os.kill(proc.proc.pid, signal.SIGCONT)
    finally:
        proc.stop()


def test_enclave_serves_concurrent_clients(enclave: EnclaveProcess) -> None:
    results: list[bool] = []

    def worker() -> None:
        results.append(_still_serving(enclave))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 4

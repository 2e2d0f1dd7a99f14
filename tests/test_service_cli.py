"""The owner's CLI and the demo against a real service process on localhost (slow)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cipherloop import demo as demo_mod
from cipherloop.client.service import ServiceClient
from cipherloop.cloud.process import ServiceProcess

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from cipherloop.cli import main; main()"]


def _cli(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **env})


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    data_dir = tmp_path_factory.mktemp("svc")
    admin = secrets.token_urlsafe(24)
    with ServiceProcess(data_dir, admin_token=admin) as service:
        yield service.url, admin, data_dir


def _xy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    return X, (X @ np.array([1.5, -1.0, 0.5, 0.0]) > 0).astype(float)


def test_owner_cli_over_http(service: tuple[str, str, Path], tmp_path: Path) -> None:
    url, admin, data_dir = service
    with ServiceClient(url, admin) as operator:
        owner_token = operator.create_tenant("cli-test")["owner_token"]
    env = {"CIPHERLOOP_SERVER": url, "CIPHERLOOP_TOKEN": owner_token,
           "CIPHERLOOP_KEY": str(tmp_path / "owner.key")}
    assert _cli("keygen", "--features", "4", env=env).returncode == 0

    X_hold, y_hold = _xy(80, 1)
    np.savetxt(tmp_path / "holdout.csv", np.column_stack([X_hold, y_hold]), delimiter=",")
    root = data_dir / "enclave" / "platform" / "sim-root.crt.pem"
    refused = _cli("init", "--features", "4", env=env)  # simulation not allowed: no key leaves
    assert refused.returncode == 4
    init = _cli("init", "--features", "4", "--trigger-samples", "100", "--epochs", "3",
                "--holdout", str(tmp_path / "holdout.csv"), "--allow-simulated",
                "--sim-root", str(root), env=env)
    assert init.returncode == 0, init.stderr
    model_id = init.stdout.split("CIPHERLOOP_MODEL=")[1].split()[0]
    env["CIPHERLOOP_MODEL"] = model_id

    with ServiceClient(url, owner_token) as owner:
        device_token = owner.create_token("contributor", "device")["token"]
    X, y = _xy(120, 2)
    np.savez(tmp_path / "new.npz", X=X, y=y)
    up = _cli("upload", str(tmp_path / "new.npz"), env={**env, "CIPHERLOOP_TOKEN": device_token,
                                                          "CIPHERLOOP_KEY": ""})
    assert up.returncode == 0, up.stderr
    with ServiceClient(url, owner_token) as owner:  # the round is triggered by the upload alone
        deadline = time.monotonic() + 120
        while not any(r["state"] == "done" for r in owner.rounds(model_id)):
            assert time.monotonic() < deadline, str(owner.rounds(model_id))
            time.sleep(0.5)

    status = _cli("status", env=env)
    assert status.returncode == 0 and ("promote" in status.stdout or "keep" in status.stdout)
    pulled = _cli("pull", "--out", str(tmp_path / "model.npz"), env=env)
    assert pulled.returncode == 0, pulled.stderr
    model = np.load(tmp_path / "model.npz")
    assert model["coef"].shape == (4,)
    np.save(tmp_path / "X.npy", X[:10])
    pred = _cli("predict", str(tmp_path / "X.npy"), "--out", str(tmp_path / "p.csv"), env=env)
    assert pred.returncode == 0, pred.stderr
    p = np.loadtxt(tmp_path / "p.csv", delimiter=",")
    expected = 1 / (1 + np.exp(-(X[:10] @ model["coef"] + float(model["intercept"]))))
    assert np.abs(p - expected).max() < 1e-3

    bad = _cli("status", env={**env, "CIPHERLOOP_TOKEN": "not-a-token"})
    assert bad.returncode == 1 and "401" in bad.stderr


def test_demo_runs_through_the_service(tmp_path: Path) -> None:
    config = demo_mod.DemoConfig(rounds=2, epochs_per_round=2)
    results = demo_mod.run(config, tmp_path / "svc")
    assert [r.round for r in results] == [0, 1, 2]
    for r in results[1:]:
        assert r.decision in ("promote", "keep")
        assert r.max_weight_gap < 1e-2
        assert abs(r.encrypted_accuracy - r.plaintext_accuracy) <= 0.01
    assert demo_mod.plot(results, tmp_path / "plot.png").stat().st_size > 10_000


def _xy3(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    z = X @ np.array([[1.5, -1.0, 0.0], [0.0, 1.0, -1.0], [0.5, 0.0, 1.0], [0.0, 0.5, 0.5]])
    return X, z.argmax(axis=1).astype(float)


def test_owner_cli_over_http_with_a_multiclass_mlp(service: tuple[str, str, Path],
                                                    tmp_path: Path) -> None:
    """init --model mlp --classes 3: uploads trigger a round, the enclave judges it on the
    pinned hold-out set, pull decrypts both layers, predict returns 3 columns."""
    url, admin, data_dir = service
    with ServiceClient(url, admin) as operator:
        owner_token = operator.create_tenant("cli-mlp")["owner_token"]
    env = {"CIPHERLOOP_SERVER": url, "CIPHERLOOP_TOKEN": owner_token,
           "CIPHERLOOP_KEY": str(tmp_path / "owner.key")}
    assert _cli("keygen", "--features", "4", env=env).returncode == 0
    X_hold, y_hold = _xy3(80, 1)
    np.savetxt(tmp_path / "holdout.csv", np.column_stack([X_hold, y_hold]), delimiter=",")
    root = data_dir / "enclave" / "platform" / "sim-root.crt.pem"
    init = _cli("init", "--features", "4", "--model", "mlp", "--classes", "3", "--hidden", "4",
                "--activation", "tanh", "--trigger-samples", "100", "--epochs", "2",
                "--lr", "0.5", "--holdout", str(tmp_path / "holdout.csv"), "--allow-simulated",
                "--sim-root", str(root), env=env)
    assert init.returncode == 0, init.stderr
    model_id = init.stdout.split("CIPHERLOOP_MODEL=")[1].split()[0]
    env["CIPHERLOOP_MODEL"] = model_id

    with ServiceClient(url, owner_token) as owner:
        device_token = owner.create_token("contributor", "device")["token"]
    X, y = _xy3(120, 2)
    np.savez(tmp_path / "new.npz", X=X, y=y)
    up = _cli("upload", str(tmp_path / "new.npz"), env={**env, "CIPHERLOOP_TOKEN": device_token,
                                                          "CIPHERLOOP_KEY": ""})
    assert up.returncode == 0, up.stderr
    with ServiceClient(url, owner_token) as owner:
        deadline = time.monotonic() + 300
        while not any(r["state"] == "done" for r in owner.rounds(model_id)):
            assert time.monotonic() < deadline, owner.rounds(model_id)
            time.sleep(0.5)
        done = next(r for r in owner.rounds(model_id) if r["state"] == "done")
    assert done["decision"] in ("promote", "keep") and "hold-out" in done["reason"]

    pulled = _cli("pull", "--out", str(tmp_path / "model.npz"), env=env)
    assert pulled.returncode == 0, pulled.stderr
    model = np.load(tmp_path / "model.npz")
    assert model["coef1"].shape == (4, 4) and model["coef2"].shape == (4, 3)
    np.save(tmp_path / "X.npy", X[:10])
    pred = _cli("predict", str(tmp_path / "X.npy"), "--out", str(tmp_path / "p.csv"), env=env)
    assert pred.returncode == 0, pred.stderr
    p = np.loadtxt(tmp_path / "p.csv", delimiter=",")
    # init standardised on the hold-out set: the network's weights apply to standardised inputs.
    assert model["mean"].shape == (4,) and model["scale"].shape == (4,)
    Xs = (X[:10] - model["mean"]) / model["scale"]
    a = np.tanh(Xs @ model["coef1"] + model["intercept1"])
    z = a @ model["coef2"] + model["intercept2"]
    expected = np.exp(z - z.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert p.shape == (10, 3) and np.abs(p - expected).max() < 1e-3


def test_demo_on_digits_runs_a_multiclass_model_through_the_service(tmp_path: Path) -> None:
    config = demo_mod.DemoConfig(rounds=2, epochs_per_round=1, data="digits", first_slice=100,
                                 holdout=120)
    results = demo_mod.run(config, tmp_path / "svc")
    assert [r.round for r in results] == [0, 1, 2]
    for r in results[1:]:
        assert r.decision in ("promote", "keep")
        assert r.max_weight_gap < 1e-2
        assert abs(r.encrypted_accuracy - r.plaintext_accuracy) <= 0.01
    assert results[-1].encrypted_accuracy > 0.6
    assert demo_mod.plot(results, tmp_path / "plot.png", "digits").stat().st_size > 10_000

"""The ``cipherloop`` command: help that teaches, exit codes that mean something."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cipherloop.cli import app
from cipherloop.client.provisioning import local_measurement
from cipherloop.learn import EnclaveProcess

runner = CliRunner()
CLI = [sys.executable, "-c", "from cipherloop.cli import main; main()"]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for cmd in ("demo", "keygen", "init", "upload", "status", "pull", "predict", "serve",
                "attest", "provision", "enclave"):
        assert cmd in result.output


def test_enclave_measure_prints_the_measurement() -> None:
    result = runner.invoke(app, ["enclave", "measure"])
    assert result.exit_code == 0
    assert result.output.strip() == local_measurement()
    assert len(local_measurement()) == 96  # SHA-384, hex


def test_usage_error_exits_2(tmp_path: Path) -> None:
    result = _run("keygen", "--features", "0", "--out", str(tmp_path / "k"))
    assert result.returncode == 2


def test_keygen_writes_an_owner_only_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    first = _run("keygen", "--out", str(key), "--features", "8")
    assert first.returncode == 0, first.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    again = _run("keygen", "--out", str(key), "--features", "8")
    assert again.returncode == 2 and "--force" in again.stderr


def test_unreachable_service_exits_3(tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    assert _run("keygen", "--out", str(key), "--features", "4").returncode == 0
    result = _run("status", "--model", "m", "--server", "http://127.0.0.1:9", "--token", "t")
    assert result.returncode == 3 and "not reachable" in result.stderr


@pytest.fixture(scope="module")
def local_enclave() -> EnclaveProcess:
    with EnclaveProcess() as proc:
        yield proc


def test_attest_refuses_simulated_evidence_unless_allowed(local_enclave: EnclaveProcess) -> None:
    refused = _run("attest", "--socket", str(local_enclave.socket_path))
    assert refused.returncode == 4 and "simulat" in refused.stderr.lower()
    root = local_enclave.state_dir / "platform" / "sim-root.crt.pem"
    ok = _run("attest", "--socket", str(local_enclave.socket_path), "--allow-simulated",
              "--sim-root", str(root))
    assert ok.returncode == 0, ok.stderr
    assert "NOT A TEE" in ok.stdout and local_measurement() in ok.stdout
    assert "SimulatedEvidenceWarning" in ok.stderr  # the warning is visible every time


def test_attest_refuses_a_measurement_not_on_the_allowlist(local_enclave: EnclaveProcess) -> None:
    root = local_enclave.state_dir / "platform" / "sim-root.crt.pem"
    result = _run("attest", "--socket", str(local_enclave.socket_path), "--allow-simulated",
                  "--sim-root", str(root), "--measurement", "ab" * 48)
    assert result.returncode == 4 and "measurement" in result.stderr


def test_provision_over_the_socket(local_enclave: EnclaveProcess, tmp_path: Path) -> None:
    key = tmp_path / "owner.key"
    assert _run("keygen", "--out", str(key), "--features", "4").returncode == 0
    root = local_enclave.state_dir / "platform" / "sim-root.crt.pem"
    result = _run("provision", "--key", str(key), "--socket", str(local_enclave.socket_path),
                  "--allow-simulated", "--sim-root", str(root))
    assert result.returncode == 0, result.stderr
    assert len(local_enclave.client.hello()["keys"]) == 1
    secret = key.read_bytes()
    assert secret.hex()[:64] not in result.stdout + result.stderr

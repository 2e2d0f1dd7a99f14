"""The README's walkthrough, command for command, on raw CSVs, against a real service.

REAL throughout: ``cipherloop serve`` as its own process (uvicorn, worker,
simulated enclave), the CLI as a subprocess, real CKKS. Every command run
here appears verbatim in README.md (the test checks), so the README can't
drift from what works. The end: encrypted predictions on the README's
patients within 2 points of scikit-learn's ``make_pipeline(StandardScaler(),
LogisticRegression())`` fitted on the same owner and new samples.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cipherloop.cloud.process import free_port

pytestmark = pytest.mark.slow

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
CIPHERLOOP = str(Path(sys.executable).parent / "cipherloop")
ADMIN = "walkthrough-admin-token-change-me"


def _readme_says(command: str) -> None:
    assert f".venv/bin/cipherloop {command}" in README, f"README lacks: cipherloop {command}"


def _cli(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    _readme_says(command)
    args = command.replace("$CONTRIBUTOR_TOKEN", env.get("CONTRIBUTOR_TOKEN", "")).split()
    r = subprocess.run([CIPHERLOOP, *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (command, r.stdout, r.stderr)
    return r


@pytest.fixture
def terminal_1(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``cipherloop serve --data-dir cipherloop-data`` in its own process, as in the README."""
    _readme_says("serve --data-dir cipherloop-data")
    assert f"export CIPHERLOOP_ADMIN_TOKEN={ADMIN}" in README
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([CIPHERLOOP, "serve", "--data-dir", "cipherloop-data",
                             "--port", str(port)], cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "CIPHERLOOP_ADMIN_TOKEN": ADMIN})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.2)
        yield url, tmp_path
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


def test_readme_walkthrough_on_raw_csvs_matches_sklearn(terminal_1: tuple[str, Path]) -> None:
    url, cwd = terminal_1
    env = {**os.environ, "CIPHERLOOP_SERVER": url, "CIPHERLOOP_ADMIN_TOKEN": ADMIN,
           "COLUMNS": "80"}
    second = subprocess.run([CIPHERLOOP, "serve", "--data-dir", "cipherloop-data", "--port",
                             str(free_port())], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 5 and "in use by another cipherloop service" in second.stderr
    _cli("sample-data --out example", env, cwd)
    assert '-d \'{"name": "clinic"}\'' in README and "/v1/admin/tenants" in README
    tenant = httpx.post(f"{url}/v1/admin/tenants", json={"name": "clinic"},
                        headers={"Authorization": f"Bearer {ADMIN}"})
    env["CIPHERLOOP_TOKEN"] = tenant.json()["owner_token"]
    _cli("keygen --features 30", env, cwd)
    init = _cli("init --features 30 --data example/owner.csv --holdout example/holdout.csv "
                "--allow-simulated --sim-root cipherloop-data/enclave/platform/sim-root.crt.pem",
                env, cwd)
    assert "| tee init.log\nexport CIPHERLOOP_MODEL=$(sed -n 's/.*export CIPHERLOOP_MODEL=//p' " \
        "init.log)" in README
    env["CIPHERLOOP_MODEL"] = re.findall(r"export CIPHERLOOP_MODEL=(\S+)", init.stdout)[0]
    env["CONTRIBUTOR_TOKEN"] = _cli("token contributor", env, cwd).stdout.strip()
    up = _cli("upload example/new-samples.csv --token $CONTRIBUTOR_TOKEN", env, cwd)
    assert "260 samples (data)" in up.stdout and "ciphertexts" in up.stdout

    deadline = time.monotonic() + 300
    while True:  # "repeat it until round 1 is done"
        status = _cli("status", env, cwd)
        assert all(len(line) <= 80 for line in status.stdout.splitlines()), status.stdout
        if re.search(r"^\s*│?\s*1\s*│\s*done", status.stdout, re.M):
            break
        assert "failed" not in status.stdout, status.stdout
        assert time.monotonic() < deadline, status.stdout
        time.sleep(1.0)
    assert "next round: 256 more samples (trigger 256)" in status.stdout
    print(status.stdout)

    pred = _cli("predict example/patients.csv --labels example/patients-labels.csv "
                "--out scores.csv", env, cwd)
    p = np.loadtxt(cwd / "scores.csv", delimiter=",")
    truth = np.loadtxt(cwd / "example" / "patients-labels.csv", delimiter=",", skiprows=1)
    encrypted = float(np.mean((p > 0.5) == (truth > 0.5)))
    assert f"accuracy {encrypted:.3f}" in pred.stdout
    assert np.ptp(p) > 0.5  # confident scores, not 0.5 for everyone

    def xy(name: str) -> tuple[np.ndarray, np.ndarray]:
        t = np.loadtxt(cwd / "example" / f"{name}.csv", delimiter=",", skiprows=1)
        return t[:, :-1], t[:, -1]

    X_patients = np.loadtxt(cwd / "example" / "patients.csv", delimiter=",", skiprows=1)
    (Xo, yo), (Xn, yn) = xy("owner"), xy("new-samples")
    sk = make_pipeline(StandardScaler(), LogisticRegression()).fit(np.vstack([Xo, Xn]),
                                                                   np.r_[yo, yn])
    reference = float(sk.score(X_patients, truth))
    print(f"walkthrough: encrypted {encrypted:.3f}, scikit-learn pipeline {reference:.3f}")
    assert encrypted >= reference - 0.02

    _cli("pull --out model.npz", env, cwd)
    model = np.load(cwd / "model.npz")  # weights on raw columns: the scaling folded in
    raw = 1 / (1 + np.exp(-(X_patients @ model["coef"] + float(model["intercept"]))))
    assert np.abs(raw - p).max() < 1e-3

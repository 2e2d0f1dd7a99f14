"""Fixtures for the owner-side verifier tests: a simulated enclave, its policy, real DCAP data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cipherloop.attest import VerifierPolicy
from cipherloop.ckks import CkksParams, SecretContext
from cipherloop.enclave.platform.sim import SimPlatform

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dcap_dir() -> Path:
    """The real SGX/TDX samples (never copied into the repo); skip when absent."""
    env = os.environ.get("CIPHERLOOP_DCAP_TESTDATA")
    path = Path(env) if env else REPO.parent / "shared" / "testdata" / "dcap"
    if not (path / "sgx_quote").is_file():
        pytest.skip(
            f"DCAP samples not found at {path}; set CIPHERLOOP_DCAP_TESTDATA to the directory "
            "holding sgx_quote, tdx_quote and their collateral JSON"
        )
    return path


@pytest.fixture()
def sim(tmp_path: Path) -> SimPlatform:
    """A simulated enclave with its own state directory (own root, own host secret)."""
    return SimPlatform(tmp_path / "sim")


@pytest.fixture()
def sim_policy(sim: SimPlatform) -> VerifierPolicy:
    """A policy that allows exactly this simulated enclave."""
    return VerifierPolicy(
        measurements={sim.measurement().hex()},
        allow_simulated=True,
        pinned_roots=[sim.root_certificate_pem()],
    )


@pytest.fixture(scope="session")
def small_key() -> SecretContext:
    """A real but small CKKS key (N=4096): enough to provision, fast to make."""
    return SecretContext.generate(CkksParams(4096, (40, 20, 40), 20))

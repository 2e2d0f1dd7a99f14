"""Fixtures for the owner-side verifier tests: a simulated enclave, its policy, real DCAP data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from realparts import missing

from cipherloop.attest import VerifierPolicy
from cipherloop.enclave.platform.sim import SimPlatform

REPO = Path(__file__).resolve().parents[2]
DCAP_FILES = tuple(f"{q}{suffix}" for q in ("sgx_quote", "tdx_quote", "tdx_quote_outdated")
                   for suffix in ("", "_collateral.json"))


@pytest.fixture(scope="session")
def dcap_dir() -> Path:
    """The real SGX/TDX samples (never copied into the repo); see :mod:`realparts` when absent."""
    env = os.environ.get("CIPHERLOOP_DCAP_TESTDATA")
    path = Path(env) if env else REPO.parent / "shared" / "testdata" / "dcap"
    absent = [name for name in DCAP_FILES if not (path / name).is_file()]
    if absent:
        missing(f"DCAP test data ({', '.join(absent)} in {path})",
                "put the real SGX/TDX samples in ../shared/testdata/dcap next to the repo, or set "
                "CIPHERLOOP_DCAP_TESTDATA to the directory holding sgx_quote, tdx_quote, "
                "tdx_quote_outdated and their *_collateral.json")
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


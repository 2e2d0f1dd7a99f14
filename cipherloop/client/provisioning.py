"""The owner's side of key provisioning: verify the enclave, then release the key to it.

Runs in: owner. Transport stays out: any :class:`EnclaveClient`-like object with
``attest(nonce, session_id)`` and ``provision(session_id, envelope)`` works --
the enclave socket directly, or the cloud service relaying to its enclave.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..attest import SimulatedEvidenceWarning, VerifiedEvidence, VerifierPolicy, provision_enclave
from ..ckks import CiphertextBatch, SecretContext
from ..errors import KeyMaterialError


class EnclaveLink(Protocol):
    def attest(self, nonce: bytes, session_id: bytes) -> dict[str, Any]: ...

    def provision(self, session_id: bytes, envelope: bytes) -> str: ...


def local_measurement() -> str:
    """The measurement this installation's enclave code has (``cipherloop enclave measure``)."""
    from ..enclave.platform.sim import measure_package

    return measure_package().hex()


def sim_root(state_dir: str | Path) -> bytes:
    """The simulated TEE root an enclave created in ``state_dir``, for the owner to pin."""
    from ..enclave.platform.sim import ROOT_CERT_FILE

    path = Path(state_dir) / "platform" / ROOT_CERT_FILE
    try:
        return path.read_bytes()
    except OSError:
        raise KeyMaterialError(f"no simulated TEE root at {path}; has that enclave started?") from None


def simulated_policy(state_dir: str | Path, measurements: Collection[str] | None = None
                     ) -> VerifierPolicy:
    """Accept the local simulated enclave: its root pinned, its measurement allowlisted.

    Development only. Every acceptance warns; the result says ``simulated=True``.
    """
    allowed = set(measurements) if measurements is not None else {local_measurement()}
    return VerifierPolicy(measurements=allowed, allow_simulated=True,
                          pinned_roots=(sim_root(state_dir),))


def holdout_pin(features: CiphertextBatch, labels: CiphertextBatch) -> list[str]:
    """What an owner pins in its policy so the enclave scores releases on this hold-out set only.

    Pin the very batches you upload: encryption is randomised, so a second
    encryption of the same data has other digests.
    """
    return [features.digest(), labels.digest()]


def provision(link: EnclaveLink, key: SecretContext, verifier: VerifierPolicy, *,
              policy: Mapping[str, Any] | None = None, quiet_simulation: bool = False
              ) -> VerifiedEvidence:
    """Challenge the enclave, verify its evidence, and send it the HPKE-wrapped secret key.

    Parameters
    ----------
    link : the enclave, directly or through the service.
    key : the owner's secret context.
    verifier : what the owner accepts as a trustworthy enclave.
    policy : the release policy the enclave must enforce for this key (see
        ``cipherloop.enclave.policy.Policy``). Its ``version`` defaults to the
        current time in microseconds, so a later provisioning replaces an
        earlier one and the enclave refuses the older one from then on.
    quiet_simulation : suppress the simulated-evidence warning (the caller shows its own).
    """
    sessions: list[bytes] = []

    def offer(nonce: bytes, session_id: bytes) -> dict[str, Any]:
        sessions.append(session_id)
        return link.attest(nonce, session_id)

    def send(envelope: bytes) -> None:
        link.provision(sessions[-1], envelope)

    with warnings.catch_warnings():
        if quiet_simulation:
            warnings.simplefilter("ignore", SimulatedEvidenceWarning)
        doc = dict(policy or {})
        doc.setdefault("version", time.time_ns() // 1000)
        return provision_enclave(offer, send, key.export_secret(), key.key_id, key.params.digest(),
                                 doc, verifier)

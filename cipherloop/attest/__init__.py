"""Verifier side of attestation: evidence verification and key release to verified enclaves.

Runs in: owner.

* :func:`verify_evidence` — Nitro documents (and the simulated TEE's), SGX
  and TDX DCAP quotes, under a :class:`VerifierPolicy`;
* :func:`new_challenge`, :func:`verify_offer`, :func:`wrap_key` — the owner's
  half of the ``cipherloop-prov/v1`` key provisioning protocol;
* :func:`provision_enclave`, :func:`describe` — all of it in one call, and
  the result in plain words.
"""

from .evidence import SimulatedEvidenceWarning, VerifiedEvidence
from .keyrelease import Challenge, EnclaveOffer, new_challenge, verify_offer, wrap_key
from .owner import describe, provision_enclave
from .policy import VerifierPolicy
from .verify import verify_evidence

__all__ = [
    "Challenge",
    "EnclaveOffer",
    "SimulatedEvidenceWarning",
    "VerifiedEvidence",
    "VerifierPolicy",
    "describe",
    "new_challenge",
    "provision_enclave",
    "verify_evidence",
    "verify_offer",
    "wrap_key",
]

"""The error types of every boundary, in one place.

Runs in: owner, host and enclave. Messages never carry key or ciphertext
bytes; lower-level errors are translated at the boundary with ``from None``.
"""

from __future__ import annotations


class CipherloopError(Exception):
    """Base class of every error cipherloop raises on purpose."""


class InvalidCiphertext(CipherloopError):
    """A ciphertext or batch is malformed, truncated, or not for these parameters/key."""


class ParameterMismatch(InvalidCiphertext):
    """A ciphertext was made under other CKKS parameters or another key."""


class ShapeError(CipherloopError, ValueError):
    """Inputs have the wrong shape, count or layout for the operation."""


class ProtocolError(CipherloopError):
    """A frame or message on the enclave link is malformed or too large."""


class EnclaveError(CipherloopError):
    """The enclave refused a request; the message says why in plain words."""


class EnclaveUnavailable(CipherloopError):
    """The enclave process is not reachable or died mid-request."""


class EngineUnavailable(CipherloopError):
    """The compute engine (a Ray cluster) is not reachable or lost its workers for good."""


class PolicyViolation(EnclaveError):
    """The owner's policy does not allow this release or operation."""


# --- Enclave refusals: one class per reason, all raised before anything is decrypted. ---
# A test (or an operator) can tell "refused for this reason" from "the enclave faulted".


class UnknownKey(EnclaveError):
    """No key with this id is provisioned in this enclave."""


class BadRequest(EnclaveError):
    """A request field is missing, of the wrong type, or outside its documented bounds."""


class LevelMismatch(InvalidCiphertext):
    """A ciphertext sits at a level the operation does not take."""


class ScaleMismatch(InvalidCiphertext):
    """A ciphertext's scale is not the exact scale the operation expects at its level."""


class BudgetExhausted(PolicyViolation):
    """The owner's release budget (per day, or in total) is spent."""


class TooFewSamples(PolicyViolation):
    """An aggregate would cover fewer samples than the owner's policy asks for."""


class UnpinnedHoldout(PolicyViolation):
    """Releases are computed only on hold-out sets the owner pinned in its policy."""


class StalePolicy(PolicyViolation):
    """A policy older than (or conflicting with) the one the enclave holds was offered."""


class KeySuspended(EnclaveError):
    """The enclave stopped serving this key after a fault of its own; the owner must re-provision."""


class StateDirLocked(EnclaveError):
    """Another enclave process already serves this state directory (it would fork the budget)."""


class EnclaveFault(EnclaveError):
    """Something failed after decryption. Always the same message, whatever the values."""


class AttestationError(CipherloopError):
    """Evidence failed verification; never says more than which check failed."""


class KeyMaterialError(CipherloopError):
    """Key material is missing, unreadable, or does not match."""


# --- Attestation and key provisioning: one class per failed check. -------------------
# Messages name the check that failed, never key, envelope or sealed-blob bytes.


class EvidenceMalformed(AttestationError):
    """Evidence (or an offer carrying it) could not be parsed as a supported format."""


class EvidenceSignatureInvalid(AttestationError):
    """The evidence's own signature (document or quote) does not verify."""


class UntrustedRoot(AttestationError):
    """The evidence's certificate chain does not lead to a root the verifier pins."""


class SimulationNotAllowed(UntrustedRoot):
    """Evidence comes from the simulated TEE and the policy does not allow simulation."""


class CollateralExpired(AttestationError):
    """A certificate, CRL or TCB collateral item is not valid at the verification time."""


class TcbStatusRejected(AttestationError):
    """The platform's TCB status is not one the verifier policy accepts."""


class DebugEnclaveRejected(AttestationError):
    """The enclave runs in debug mode, so the host can read its memory."""


class MeasurementNotAllowed(AttestationError):
    """The enclave's measurement is not on the owner's allowlist."""


class FreshnessError(AttestationError):
    """Evidence is not fresh: too old, or it answers another or an already used challenge."""


class StaleEvidence(FreshnessError):
    """The evidence's timestamp is older than the policy allows (or in the future)."""


class ReplayedChallenge(FreshnessError):
    """A challenge was used twice, or the offer answers another session."""


class ReportDataMismatch(AttestationError):
    """The evidence's report data does not bind this public key, nonce and session."""


class ProvisioningFailed(AttestationError):
    """The enclave refused a key envelope; deliberately says nothing about why."""


class PlatformUnavailable(AttestationError):
    """The TEE device or service this platform needs is not available here."""

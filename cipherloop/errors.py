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


class PolicyViolation(EnclaveError):
    """The owner's policy does not allow this release or operation."""


class AttestationError(CipherloopError):
    """Evidence failed verification; never says more than which check failed."""


class KeyMaterialError(CipherloopError):
    """Key material is missing, unreadable, or does not match."""

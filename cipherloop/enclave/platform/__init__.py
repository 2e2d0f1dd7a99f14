"""TEE platforms: where evidence comes from and where the enclave seals its key.

Runs in: enclave. Three implementations share one small protocol:

* ``sim`` (:mod:`.sim`): an ordinary OS process pretending to be a TEE, for
  development and CI. **Not a TEE.** Verifiers refuse it unless told to allow
  simulation.
* ``sgx`` (:mod:`.sgx_gramine`): Intel SGX under Gramine, DCAP quotes through
  ``/dev/attestation``, sealing with Gramine's MRENCLAVE-bound key.
* ``nitro`` (:mod:`.nitro`): AWS Nitro Enclaves, attestation documents from
  the NSM device, sealing through AWS KMS.

Each platform module is imported only when :func:`load_platform` asks for it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["PLATFORMS", "REPORT_DATA_BYTES", "Platform", "load_platform"]

#: Bytes of report data every platform binds into its evidence.
REPORT_DATA_BYTES = 64

#: Names :func:`load_platform` accepts.
PLATFORMS = ("sim", "sgx", "nitro")


@runtime_checkable
class Platform(Protocol):
    """What the enclave needs from its TEE: identity, evidence and sealing.

    Attributes
    ----------
    name : str
        ``"sim"``, ``"sgx"`` or ``"nitro"``; stored next to sealed blobs.
    """

    @property
    def name(self) -> str:
        """The platform's short name."""
        ...

    def measurement(self) -> bytes:
        """The running enclave's code identity (PCR0, MRENCLAVE or the sim package hash)."""
        ...

    def evidence(self, report_data: bytes) -> bytes:
        """Evidence, signed by the platform, that binds exactly these 64 bytes."""
        ...

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt for this enclave identity only (same measurement, same platform)."""
        ...

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Open a blob :meth:`seal` made; raise ``KeyMaterialError`` on any mismatch."""
        ...


def load_platform(name: str, **settings: Any) -> Platform:
    """Build the platform called ``name``.

    Parameters
    ----------
    name : {"sim", "sgx", "nitro"}
        Which TEE this enclave runs on.
    **settings
        Keyword arguments of that platform's constructor, e.g. ``state_dir``
        for ``sim``, ``attestation_dir`` for ``sgx``, ``device`` and ``kms``
        for ``nitro``.

    Returns
    -------
    Platform

    Raises
    ------
    ValueError
        If ``name`` is not a known platform.

    Examples
    --------
    >>> import tempfile
    >>> p = load_platform("sim", state_dir=tempfile.mkdtemp())
    >>> p.name
    'sim'
    """
    if name == "sim":
        from .sim import SimPlatform

        return SimPlatform(**settings)
    if name == "sgx":
        from .sgx_gramine import GraminePlatform

        return GraminePlatform(**settings)
    if name == "nitro":
        from .nitro import NitroPlatform

        return NitroPlatform(**settings)
    raise ValueError(f"name must be one of {', '.join(PLATFORMS)}")

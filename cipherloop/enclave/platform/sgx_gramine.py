"""Intel SGX under Gramine: DCAP quotes and MRENCLAVE-bound sealing.

Runs in: enclave (inside ``gramine-sgx``, manifest in ``deploy/gramine/``).

Gramine exposes the enclave's attestation interface as pseudo-files under
``/dev/attestation`` (the manifest must say ``sgx.remote_attestation =
"dcap"``):

* ``attestation_type`` reads ``dcap``;
* writing 64 bytes to ``user_report_data`` and then reading ``quote`` yields
  a DCAP quote (v3) whose report data are those bytes;
* ``my_target_info`` starts with this enclave's MRENCLAVE (32 bytes);
* ``keys/_sgx_mrenclave`` is a 128-bit key that only an enclave with the same
  MRENCLAVE on the same CPU can derive (SGX sealing key, MRENCLAVE policy).

Sealing uses a key derived from ``_sgx_mrenclave`` with HKDF, never the raw
key, and the manifest does not also use that key for an encrypted mount
(Gramine warns against double use). The sealed blob itself lives in an
ordinary host file: AES-GCM makes it tamper-evident; the host can delete it
or hand back an older blob, both harmless for a key that never changes.

The constructor takes the attestation root, so tests point it at a fake
directory with the same file names.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import PlatformUnavailable
from . import REPORT_DATA_BYTES, _sealing

__all__ = ["GraminePlatform"]

_MRENCLAVE_IN_QUOTE = slice(112, 144)  # 48-byte header, then the report body
_MRENCLAVE_IN_TARGET_INFO = slice(0, 32)
_SEAL_SALT = b"cipherloop-sgx-seal/v1"


class GraminePlatform:
    """SGX enclave under Gramine, talking to ``/dev/attestation``.

    Parameters
    ----------
    attestation_dir : path, default "/dev/attestation"
        Gramine's attestation pseudo-filesystem (or a fake one in tests).

    Raises
    ------
    PlatformUnavailable
        From every method, when the directory is missing or Gramine's
        attestation type is not ``dcap``.
    """

    name = "sgx"

    def __init__(self, attestation_dir: Path | str = "/dev/attestation") -> None:
        self.attestation_dir = Path(attestation_dir)
        self._measurement: bytes | None = None

    def __repr__(self) -> str:
        return f"GraminePlatform(attestation_dir={str(self.attestation_dir)!r})"

    def _file(self, name: str) -> Path:
        path = self.attestation_dir / name
        if not path.exists():
            raise PlatformUnavailable(
                f"Gramine SGX attestation is not available: {path} is missing "
                '(run under gramine-sgx with sgx.remote_attestation = "dcap")'
            )
        return path

    def _require_dcap(self) -> None:
        kind = self._file("attestation_type").read_text().strip()
        if kind != "dcap":
            raise PlatformUnavailable(
                f"Gramine attestation type is {kind!r}; cipherloop needs \"dcap\""
            )

    def measurement(self) -> bytes:
        """MRENCLAVE (32 bytes), from ``my_target_info`` or else from a quote."""
        if self._measurement is None:
            target_info = self.attestation_dir / "my_target_info"
            if target_info.exists():
                mrenclave = target_info.read_bytes()[_MRENCLAVE_IN_TARGET_INFO]
            else:
                mrenclave = self.evidence(bytes(REPORT_DATA_BYTES))[_MRENCLAVE_IN_QUOTE]
            if len(mrenclave) != 32:
                raise PlatformUnavailable("Gramine returned a truncated MRENCLAVE")
            self._measurement = mrenclave
        return self._measurement

    def evidence(self, report_data: bytes) -> bytes:
        """A DCAP quote whose report data are ``report_data``.

        Parameters
        ----------
        report_data : bytes
            Exactly 64 bytes.

        Returns
        -------
        bytes
            The raw quote, as Gramine's quoting enclave produced it.

        Raises
        ------
        ValueError
            If ``report_data`` is not 64 bytes.
        PlatformUnavailable
            Outside Gramine, or without DCAP attestation.
        """
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError("report_data must be 64 bytes")
        self._require_dcap()
        # Gramine generates the quote when ``quote`` is opened, from whatever
        # ``user_report_data`` holds at that moment: write first, then read.
        with self._file("user_report_data").open("wb") as f:
            f.write(report_data)
        quote = self._file("quote").read_bytes()
        if not quote:
            raise PlatformUnavailable("Gramine returned an empty quote")
        return quote

    def _seal_key(self) -> bytes:
        raw = self._file("keys/_sgx_mrenclave").read_bytes()
        if len(raw) not in (16, 32):
            raise PlatformUnavailable("Gramine's _sgx_mrenclave key has an unexpected size")
        return _sealing.derive_key(raw, salt=_SEAL_SALT, info=b"cipherloop sealed storage")

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under a key derived from Gramine's ``_sgx_mrenclave`` key."""
        return _sealing.seal(self._seal_key(), plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Open a blob sealed by an enclave with this MRENCLAVE on this CPU.

        Raises
        ------
        KeyMaterialError
            If the enclave, the CPU, the AAD or the blob differ.
        """
        return _sealing.unseal(self._seal_key(), blob, aad)

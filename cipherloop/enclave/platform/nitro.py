"""AWS Nitro Enclaves: NSM attestation documents, KMS sealing, vsock transport.

Runs in: enclave (inside a Nitro enclave image, recipe in ``deploy/nitro/``).

**Evidence.** The Nitro Secure Module is the device ``/dev/nsm``. Its driver
takes one ioctl, ``NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw)``, whose
argument points at a CBOR request and a response buffer. The request
``{"Attestation": {"user_data": …, "nonce": null, "public_key": null}}``
returns ``{"Attestation": {"document": …}}``: an untagged COSE_Sign1
(ES384) around the attestation document, signed under the AWS Nitro root.
The 64 bytes of report data travel in ``user_data``. There is no maintained
NSM binding on PyPI, so the ioctl is issued here with :mod:`fcntl` and
:mod:`ctypes`; outside an enclave (no ``/dev/nsm``) every call raises
:class:`NitroUnavailable`. This path cannot be exercised without Nitro
hardware and is untested there.

**Measurement** is PCR0 (SHA-384 of the enclave image file), read with the
NSM request ``{"DescribePCR": {"index": 0}}``.

**Sealing** has no local equivalent on Nitro: an enclave has no persistent
storage and no sealing key. The standard pattern is AWS KMS with attested
recipients:

1. A KMS key's policy allows ``kms:GenerateDataKey`` and ``kms:Decrypt`` only
   with the condition ``kms:RecipientAttestation:ImageSha384`` equal to this
   enclave's PCR0 (optionally PCR8, the signing certificate).
2. To seal, the enclave makes an ephemeral RSA key, asks the NSM for a
   document whose ``public_key`` is that key, and calls ``GenerateDataKey``
   with ``Recipient = {AttestationDocument, KeyEncryptionAlgorithm:
   RSAES_OAEP_SHA_256}``. KMS returns the data key encrypted to the RSA key
   (``CiphertextForRecipient``) plus the KMS ciphertext blob. The enclave
   encrypts with the data key (AES-256-GCM) and stores the KMS blob next to
   the ciphertext, on the parent instance's disk.
3. To unseal after a restart, it calls ``Decrypt`` on the KMS blob with a
   fresh attested recipient; KMS checks PCR0 against the key policy, so a
   changed enclave gets nothing.

KMS is reached through the parent instance's ``vsock-proxy``. That client
(``kmstool-enclave-cli`` or an SDK with a vsock transport) is deployment
specific, so it plugs in as a :class:`KmsSealer`; without one, :meth:`seal`
and :meth:`unseal` raise :class:`NitroUnavailable` saying KMS is required.

**Transport.** An enclave's only channel is vsock. Addresses are written
``vsock:CID:PORT`` (CID 3 is the parent instance, 16+ are enclaves; ``any``
listens on every CID); :func:`connect_vsock` and :func:`listen_vsock` open
``AF_VSOCK`` sockets where the OS supports them.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ...errors import KeyMaterialError, PlatformUnavailable
from . import REPORT_DATA_BYTES

__all__ = [
    "KmsSealer",
    "NitroPlatform",
    "NitroUnavailable",
    "connect_vsock",
    "listen_vsock",
    "parse_vsock_address",
]

# _IOWR(NSM_MAGIC=0x0A, 0, struct nsm_raw): dir=3 (read|write), size=32, type=0x0A, nr=0.
_NSM_IOCTL_RAW = (3 << 30) | (32 << 16) | (0x0A << 8) | 0
_NSM_REQUEST_MAX = 0x1000
_NSM_RESPONSE_MAX = 0x3000
_SEALED_FORMAT = "cipherloop-nitro-kms-seal/v1"
_VMADDR_CID_ANY = 0xFFFFFFFF


class NitroUnavailable(PlatformUnavailable):
    """The NSM device, AF_VSOCK or the KMS sealer this Nitro feature needs is missing."""


class KmsSealer(Protocol):
    """Data keys from AWS KMS, released only to an attested enclave (see module docs).

    ``attest(public_key_der)`` returns a fresh NSM attestation document whose
    ``public_key`` is the given recipient key; the implementation passes it as
    the KMS ``Recipient`` and decrypts ``CiphertextForRecipient`` with the
    matching private key.
    """

    def new_data_key(self, attest: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
        """A fresh 32-byte data key and its KMS ciphertext blob."""
        ...

    def open_data_key(self, wrapped: bytes, attest: Callable[[bytes], bytes]) -> bytes:
        """The data key inside a KMS ciphertext blob made by :meth:`new_data_key`."""
        ...


class _Iovec(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _NsmRaw(ctypes.Structure):
    _fields_ = [("request", _Iovec), ("response", _Iovec)]


def _attestation_request(
    user_data: bytes | None, public_key: bytes | None = None
) -> dict[str, Any]:
    """The CBOR request the NSM answers with an attestation document."""
    return {"Attestation": {"user_data": user_data, "nonce": None, "public_key": public_key}}


def _response_field(response: object, op: str, field: str) -> Any:
    """``response[op][field]``, or a readable error when the NSM said no."""
    if isinstance(response, Mapping):
        if "Error" in response:
            raise NitroUnavailable(f"NSM refused {op}: {response['Error']}")
        body = response.get(op)
        if isinstance(body, Mapping) and field in body:
            return body[field]
    raise NitroUnavailable(f"NSM answered {op} with an unexpected response")


class NitroPlatform:
    """An AWS Nitro enclave.

    Parameters
    ----------
    device : path, default "/dev/nsm"
        The Nitro Secure Module device.
    kms : KmsSealer, optional
        Seals through AWS KMS; without it, sealing raises.

    Raises
    ------
    NitroUnavailable
        From evidence and measurement when ``device`` does not exist; from
        seal/unseal when no ``kms`` is configured.
    """

    name = "nitro"

    def __init__(self, device: Path | str = "/dev/nsm", kms: KmsSealer | None = None) -> None:
        self.device = Path(device)
        self.kms = kms
        self._measurement: bytes | None = None

    def __repr__(self) -> str:
        return f"NitroPlatform(device={str(self.device)!r}, kms={self.kms is not None})"

    def _call(self, request: Mapping[str, Any]) -> Any:
        if not self.device.exists():
            raise NitroUnavailable(
                f"{self.device} not found: Nitro attestation works only inside a Nitro enclave"
            )
        encoded = cbor2.dumps(request)
        if len(encoded) > _NSM_REQUEST_MAX:
            raise ValueError("NSM request too large")
        req = ctypes.create_string_buffer(encoded, len(encoded))
        resp = ctypes.create_string_buffer(_NSM_RESPONSE_MAX)
        msg = _NsmRaw(
            _Iovec(ctypes.addressof(req), len(encoded)),
            _Iovec(ctypes.addressof(resp), _NSM_RESPONSE_MAX),
        )
        fd = os.open(self.device, os.O_RDWR)
        try:
            fcntl.ioctl(fd, _NSM_IOCTL_RAW, msg)  # the driver writes response.len back
        except OSError as e:
            raise NitroUnavailable(f"NSM ioctl failed: {os.strerror(e.errno or 0)}") from None
        finally:
            os.close(fd)
        return cbor2.loads(resp.raw[: min(int(msg.response.len), _NSM_RESPONSE_MAX)])

    def _document(self, user_data: bytes | None, public_key: bytes | None) -> bytes:
        response = self._call(_attestation_request(user_data, public_key))
        return bytes(_response_field(response, "Attestation", "document"))

    def measurement(self) -> bytes:
        """PCR0 (48 bytes), read from the NSM."""
        if self._measurement is None:
            data = _response_field(self._call({"DescribePCR": {"index": 0}}), "DescribePCR", "data")
            self._measurement = bytes(data)
        return self._measurement

    def evidence(self, report_data: bytes) -> bytes:
        """An NSM attestation document with ``user_data`` = ``report_data``.

        Parameters
        ----------
        report_data : bytes
            Exactly 64 bytes.

        Returns
        -------
        bytes
            Untagged COSE_Sign1, as the NSM returns it.

        Raises
        ------
        ValueError
            If ``report_data`` is not 64 bytes.
        NitroUnavailable
            Outside a Nitro enclave.
        """
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError("report_data must be 64 bytes")
        return self._document(bytes(report_data), None)

    def _attest_recipient(self, public_key_der: bytes) -> bytes:
        return self._document(None, public_key_der)

    def _require_kms(self) -> KmsSealer:
        if self.kms is None:
            raise NitroUnavailable(
                "sealing on Nitro requires AWS KMS: configure a KmsSealer "
                "(KMS key policy conditioned on kms:RecipientAttestation:ImageSha384)"
            )
        return self.kms

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under a KMS data key that only this PCR0 can recover."""
        kms = self._require_kms()
        key, wrapped = kms.new_data_key(self._attest_recipient)
        nonce = os.urandom(12)
        body = {
            "format": _SEALED_FORMAT,
            "kms_blob": wrapped,
            "nonce": nonce,
            "ciphertext": AESGCM(key).encrypt(nonce, plaintext, aad),
        }
        return bytes(cbor2.dumps(body))

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Recover the data key from KMS (attested) and open the blob.

        Raises
        ------
        KeyMaterialError
            If the blob is malformed or altered, or KMS returns another key.
        NitroUnavailable
            If no KMS sealer is configured.
        """
        kms = self._require_kms()
        opened: bytes | None = None
        try:
            body = cbor2.loads(blob)
            if body["format"] == _SEALED_FORMAT:
                key = kms.open_data_key(bytes(body["kms_blob"]), self._attest_recipient)
                opened = AESGCM(key).decrypt(bytes(body["nonce"]), bytes(body["ciphertext"]), aad)
        except (InvalidTag, KeyError, TypeError, ValueError, cbor2.CBORDecodeError):
            opened = None
        if opened is None:
            raise KeyMaterialError("sealed data cannot be opened by this enclave")
        return opened


def parse_vsock_address(address: str) -> tuple[int, int]:
    """Split ``vsock:CID:PORT`` into integers.

    Parameters
    ----------
    address : str
        ``vsock:`` then a context id (decimal, or ``any`` for listening on
        every CID) and a port, e.g. ``vsock:16:5005`` or ``vsock:any:5005``.

    Returns
    -------
    (int, int)
        CID and port.

    Raises
    ------
    ValueError
        If ``address`` is not in that form.

    Examples
    --------
    >>> parse_vsock_address("vsock:3:8000")
    (3, 8000)
    """
    parts = address.split(":")
    if len(parts) != 3 or parts[0] != "vsock":
        raise ValueError("address must look like vsock:CID:PORT")
    cid_text, port_text = parts[1], parts[2]
    try:
        cid = _VMADDR_CID_ANY if cid_text.lower() == "any" else int(cid_text, 10)
        port = int(port_text, 10)
    except ValueError:
        raise ValueError("address must look like vsock:CID:PORT (decimal numbers)") from None
    if not (0 <= cid <= 0xFFFFFFFF and 0 <= port <= 0xFFFFFFFF):
        raise ValueError("address CID and PORT must fit in 32 bits")
    return cid, port


def _vsock() -> socket.socket:
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise NitroUnavailable("AF_VSOCK sockets are not supported on this system")
    try:
        return socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise NitroUnavailable(f"cannot open an AF_VSOCK socket: {e.strerror}") from None


def connect_vsock(address: str, *, timeout: float | None = None) -> socket.socket:
    """Connect a stream socket to ``vsock:CID:PORT``.

    Raises
    ------
    NitroUnavailable
        If the OS has no AF_VSOCK support (e.g. not Linux, or no vsock module).
    OSError
        If the connection fails.
    """
    cid, port = parse_vsock_address(address)
    sock = _vsock()
    sock.settimeout(timeout)
    try:
        sock.connect((cid, port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_vsock(address: str, *, backlog: int = 16) -> socket.socket:
    """A listening stream socket on ``vsock:CID:PORT`` (``any`` for every CID).

    Raises
    ------
    NitroUnavailable
        If the OS has no AF_VSOCK support.
    OSError
        If binding fails.
    """
    cid, port = parse_vsock_address(address)
    sock = _vsock()
    try:
        sock.bind((cid, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock

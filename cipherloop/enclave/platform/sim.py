"""SIMULATED TEE — NOT A TEE. Development and CI only; it protects nothing.

Runs in: enclave (simulated: an ordinary OS process on the host).

This module imitates a TEE so that the whole provisioning protocol can run
without hardware. The host that runs it can read every secret it holds: the
signing keys and the sealing secret are plain files in the state directory.

* **Evidence** is an AWS Nitro attestation document (CBOR map with
  ``module_id``, ``timestamp``, ``digest`` = ``"SHA384"``, ``pcrs``,
  ``certificate``, ``cabundle``, ``public_key``, ``user_data``, ``nonce``)
  inside a COSE_Sign1 (CBOR tag 18, ES384), signed by a leaf certificate under
  a locally generated root whose subject CN is exactly
  ``SIMULATED TEE ROOT - NOT A TEE``. ``module_id`` says ``NOT-A-TEE`` too.
  The 64 bytes of report data travel in ``user_data``. PCR0 is the
  measurement; every other PCR is zero.
* **Debug mode** mirrors Nitro's: a debug enclave's document shows all-zero
  PCRs, so no allowlist can match it and verifiers report ``debug``.
* **Measurement** is SHA-384 over the enclave package: every file under
  ``cipherloop/enclave/`` and ``cipherloop/ckks/``, ``cipherloop/errors.py``
  and the package's ``cipherloop/__init__.py`` (it runs too), sorted by
  relative path, path and content hashed, ``__pycache__`` left out; followed
  by the installed versions of the enclave's dependencies.
  Editing any enclave file changes it.
* **Sealing** is AES-256-GCM under a key derived (HKDF-SHA256) from a host
  secret file and the measurement, so a changed enclave cannot unseal.

State directory files (all created ``0600`` on first use, directory ``0700``):
``sim-root.crt.pem`` (pin this on the owner's side), ``sim-root.key.pem``,
``sim-leaf.crt.pem``, ``sim-leaf.key.pem``, ``host-secret``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from . import REPORT_DATA_BYTES, _sealing

__all__ = [
    "DEPENDENCIES",
    "SIM_LEAF_CN",
    "SIM_MODULE_ID",
    "SIM_ROOT_CN",
    "SimPlatform",
    "measure_package",
]

#: Subject CN of the simulated root; verifiers recognise simulation by it.
SIM_ROOT_CN = "SIMULATED TEE ROOT - NOT A TEE"
#: Subject CN of the simulated signing leaf.
SIM_LEAF_CN = "SIMULATED TEE ENCLAVE - NOT A TEE"
#: ``module_id`` of every simulated attestation document.
SIM_MODULE_ID = "cipherloop-sim-NOT-A-TEE"
#: Distributions whose versions are part of the measurement.
DEPENDENCIES = ("cbor2", "cryptography", "numpy", "tenseal")

_MEASURED = (
    "cipherloop/__init__.py",
    "cipherloop/enclave",
    "cipherloop/ckks",
    "cipherloop/errors.py",
)
_SKIPPED_DIRS = frozenset({"__pycache__"})
_SKIPPED_SUFFIXES = (".pyc", ".pyo")
_PCR_COUNT = 16
_COSE_ES384 = -35
_SEAL_SALT = b"cipherloop-sim-seal/v1"

_log = logging.getLogger(__name__)

_ROOT_CERT = "sim-root.crt.pem"
#: File name of the simulated root certificate in a sim state directory (for owners to pin).
ROOT_CERT_FILE = _ROOT_CERT
_ROOT_KEY = "sim-root.key.pem"
_LEAF_CERT = "sim-leaf.crt.pem"
_LEAF_KEY = "sim-leaf.key.pem"
_HOST_SECRET = "host-secret"


def _lp(data: bytes) -> bytes:
    """Length-prefixed bytes, so concatenations hash unambiguously."""
    return len(data).to_bytes(8, "big") + data


def _package_root() -> Path:
    """The directory that holds the ``cipherloop`` package this module came from."""
    return Path(__file__).resolve().parents[3]


def _measured_files(root: Path) -> Iterator[tuple[str, Path]]:
    for entry in _MEASURED:
        path = root / entry
        if path.is_file():
            yield entry, path
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
            for fname in filenames:
                if fname.endswith(_SKIPPED_SUFFIXES):
                    continue
                full = Path(dirpath) / fname
                yield full.relative_to(root).as_posix(), full


def _installed_versions() -> dict[str, str]:
    versions = {}
    for dist in DEPENDENCIES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def measure_package(
    root: Path | str | None = None, *, dependencies: Mapping[str, str] | None = None
) -> bytes:
    """SHA-384 identity of the enclave code and the versions it runs with.

    Parameters
    ----------
    root : path, optional
        Directory that contains ``cipherloop/``; defaults to the one this
        module was imported from.
    dependencies : mapping, optional
        Distribution name to version; defaults to the installed versions of
        :data:`DEPENDENCIES`.

    Returns
    -------
    bytes
        48 bytes.

    Examples
    --------
    >>> len(measure_package())
    48
    """
    base = Path(root) if root is not None else _package_root()
    versions = dict(dependencies) if dependencies is not None else _installed_versions()
    h = hashlib.sha384(b"cipherloop-sim-measurement/v1\x00")
    for rel, path in sorted(_measured_files(base)):
        h.update(_lp(rel.encode()))
        h.update(_lp(path.read_bytes()))
    for dist in sorted(versions):
        h.update(_lp(dist.encode()))
        h.update(_lp(versions[dist].encode()))
    return h.digest()


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (never widened by the umask), refusing to overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cipherloop simulation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_chain(now: dt.datetime, days: int) -> dict[str, bytes]:
    """A fresh P-384 root and leaf, as PEM files by name."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    start = now - dt.timedelta(minutes=5)
    root = (
        x509.CertificateBuilder()
        .subject_name(_name(SIM_ROOT_CN))
        .issuer_name(_name(SIM_ROOT_CN))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(root_key, hashes.SHA384())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(SIM_LEAF_CN))
        .issuer_name(root.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(root_key, hashes.SHA384())
    )
    return {
        _ROOT_CERT: root.public_bytes(serialization.Encoding.PEM),
        _ROOT_KEY: _pem_key(root_key),
        _LEAF_CERT: leaf.public_bytes(serialization.Encoding.PEM),
        _LEAF_KEY: _pem_key(leaf_key),
    }


class SimPlatform:
    """The simulated TEE. **Not a TEE**: the host can read everything it holds.

    Parameters
    ----------
    state_dir : path
        Where the simulated root, leaf and host secret live; created on first
        use. Two instances on the same directory are the same "machine": a key
        one seals, the other unseals (as long as the measurement matches).
    debug : bool, default False
        Produce debug-mode evidence (all-zero PCRs), as Nitro does.
    measurement : bytes or hex str, optional
        Use this measurement instead of hashing the package, e.g. to test what
        a changed enclave sees.
    package_root : path, optional
        Directory containing the ``cipherloop`` package to measure.
    clock : callable, default time.time
        Seconds since the epoch, for the document timestamp and certificates.
    validity_days : int, default 3650
        Lifetime of the generated root and leaf certificates.

    Examples
    --------
    >>> import tempfile
    >>> sim = SimPlatform(tempfile.mkdtemp())
    >>> blob = sim.seal(b"hello", b"aad")
    >>> sim.unseal(blob, b"aad")
    b'hello'
    """

    name = "sim"

    def __init__(
        self,
        state_dir: Path | str,
        *,
        debug: bool = False,
        measurement: bytes | str | None = None,
        package_root: Path | str | None = None,
        clock: Callable[[], float] = time.time,
        validity_days: int = 3650,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.debug = debug
        self._measurement_override = (
            bytes.fromhex(measurement) if isinstance(measurement, str) else measurement
        )
        self._package_root = package_root
        self._clock = clock
        self._validity_days = validity_days
        self._measurement: bytes | None = None
        _log.warning("SIMULATED TEE platform in use: NOT A TEE, the host can read every secret")

    def __repr__(self) -> str:
        return f"SimPlatform(state_dir={str(self.state_dir)!r}, debug={self.debug}, NOT_A_TEE)"

    # -- state directory ------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise first-use initialisation between processes sharing the directory."""
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.state_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _ensure_state(self) -> None:
        if (self.state_dir / _HOST_SECRET).exists() and (self.state_dir / _LEAF_KEY).exists():
            return
        with self._locked():
            if not (self.state_dir / _ROOT_CERT).exists():
                now = dt.datetime.fromtimestamp(self._clock(), tz=dt.UTC)
                for fname, data in _make_chain(now, self._validity_days).items():
                    _write_private(self.state_dir / fname, data)
            if not (self.state_dir / _HOST_SECRET).exists():
                _write_private(self.state_dir / _HOST_SECRET, os.urandom(32))

    def _read(self, fname: str) -> bytes:
        self._ensure_state()
        return (self.state_dir / fname).read_bytes()

    def root_certificate_pem(self) -> bytes:
        """The simulated root certificate, for the owner to pin (with ``allow_simulated``)."""
        return self._read(_ROOT_CERT)

    # -- Platform -------------------------------------------------------------------

    def measurement(self) -> bytes:
        """PCR0 of this simulated enclave: the package hash, taken once per instance."""
        if self._measurement is None:
            self._measurement = (
                self._measurement_override
                if self._measurement_override is not None
                else measure_package(self._package_root)
            )
        return self._measurement

    def evidence(self, report_data: bytes) -> bytes:
        """A COSE_Sign1-wrapped, Nitro-format attestation document over ``report_data``.

        Parameters
        ----------
        report_data : bytes
            Exactly 64 bytes; carried in the document's ``user_data``.

        Returns
        -------
        bytes
            CBOR: tag 18 around ``[protected, {}, payload, signature]``.

        Raises
        ------
        ValueError
            If ``report_data`` is not 64 bytes.
        """
        if len(report_data) != REPORT_DATA_BYTES:
            raise ValueError("report_data must be 64 bytes")
        pcrs = {i: bytes(48) for i in range(_PCR_COUNT)}
        if not self.debug:
            pcrs[0] = self.measurement()
        leaf = x509.load_pem_x509_certificate(self._read(_LEAF_CERT))
        root = x509.load_pem_x509_certificate(self._read(_ROOT_CERT))
        document = {
            "module_id": SIM_MODULE_ID,
            "timestamp": int(self._clock() * 1000),
            "digest": "SHA384",
            "pcrs": pcrs,
            "certificate": leaf.public_bytes(serialization.Encoding.DER),
            "cabundle": [root.public_bytes(serialization.Encoding.DER)],
            "public_key": None,
            "user_data": bytes(report_data),
            "nonce": None,
        }
        protected = cbor2.dumps({1: _COSE_ES384})
        payload = cbor2.dumps(document)
        to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
        key = serialization.load_pem_private_key(self._read(_LEAF_KEY), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):  # pragma: no cover - our own file
            raise ValueError("simulated leaf key is not an EC key")
        r, s = decode_dss_signature(key.sign(to_sign, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
        return bytes(cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, signature])))

    def _seal_key(self) -> bytes:
        return _sealing.derive_key(
            self._read(_HOST_SECRET), salt=_SEAL_SALT, info=self.measurement()
        )

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """AES-256-GCM under HKDF(host secret, measurement)."""
        return _sealing.seal(self._seal_key(), plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Open a blob sealed on this host by an enclave with the same measurement.

        Raises
        ------
        KeyMaterialError
            If the measurement, the host secret, the AAD or the blob differ.
        """
        return _sealing.unseal(self._seal_key(), blob, aad)

"""The default CKKS backend: Microsoft SEAL through TenSEAL's ``sealapi`` binding.

Runs in: owner, host and enclave. TenSEAL's vector API relinearises and
rescales after every multiply and has no public rotation; the raw binding it
ships gives multiply-without-relinearisation, rotations, exact rescaling and
symmetric encryption, which the packed kernels need.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from ..errors import InvalidCiphertext, KeyMaterialError
from .params import CkksParams

_SHM = Path("/dev/shm")


def _scratch_dir() -> Path:
    """A private folder for SEAL's path-only (de)serialisation, in RAM where possible.

    Named after this process, so that folders a killed process left behind
    can be told apart and swept (``cipherloop.cloud.supervise.sweep_stale``).
    """
    base = _SHM if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"cipherloop-{os.getpid()}-", dir=base))


class _Scratch:
    """SEAL's binding saves and loads only through file paths; keep those files short-lived.

    The folder is made on first use and removed when this object is collected.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None

    @contextmanager
    def path(self) -> Iterator[str]:
        if self._dir is None or not self._dir.is_dir():
            self._dir = _scratch_dir()
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        p = self._dir / uuid.uuid4().hex
        try:
            yield str(p)
        finally:
            p.unlink(missing_ok=True)

    def dump(self, obj: Any) -> bytes:
        with self.path() as p:
            obj.save(p)
            return Path(p).read_bytes()

    def fill(self, obj: Any, context: Any, data: bytes) -> None:
        with self.path() as p:
            Path(p).write_bytes(data)
            obj.load(context, p)


def seal_context(params: CkksParams) -> Any:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(
        seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes))
    )
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ValueError("SEAL rejected the CKKS parameters")
    return ctx


class SealKeys:
    """Raw SEAL key material; which parts are present decides what a backend can do."""

    def __init__(
        self,
        *,
        public_key: Any | None = None,
        relin_keys: Any | None = None,
        galois_keys: Any | None = None,
        secret_key: Any | None = None,
    ) -> None:
        self.public_key = public_key
        self.relin_keys = relin_keys
        self.galois_keys = galois_keys
        self._secret_key = secret_key

    @property
    def has_secret(self) -> bool:
        return self._secret_key is not None

    def __repr__(self) -> str:
        return f"SealKeys(secret={'<redacted>' if self.has_secret else None})"


class SealBackend:
    """:class:`~cipherloop.ckks.backend.CkksBackend` on SEAL."""

    def __init__(self, params: CkksParams, keys: SealKeys, context: Any | None = None) -> None:
        self.params = params
        self._ctx = context if context is not None else seal_context(params)
        self._keys = keys
        self._encoder = seal.CKKSEncoder(self._ctx)
        self._evaluator = seal.Evaluator(self._ctx)
        self._scratch = _Scratch()
        self.counts: Counter[str] = Counter()  # operations done, for benchmarks and tests
        self._parms_ids: dict[int, Any] = {}
        self._primes: dict[int, int] = {}
        self._level_of: dict[tuple[int, ...], int] = {}
        cd = self._ctx.first_context_data()
        while cd is not None:
            lvl = cd.chain_index()
            pid = cd.parms_id()
            self._parms_ids[lvl] = pid
            self._level_of[tuple(pid)] = lvl
            self._primes[lvl] = cd.parms().coeff_modulus()[-1].value()
            cd = cd.next_context_data()
        sk = keys._secret_key
        if sk is not None:
            self._encryptor = seal.Encryptor(self._ctx, sk)
            self._decryptor: Any | None = seal.Decryptor(self._ctx, sk)
        elif keys.public_key is not None:
            self._encryptor = seal.Encryptor(self._ctx, keys.public_key)
            self._decryptor = None
        else:
            raise KeyMaterialError("a backend needs a public or a secret key")

    def __repr__(self) -> str:
        return f"SealBackend(N={self.params.poly_modulus_degree}, decrypts={self.can_decrypt()})"

    # -- key generation and key bytes ---------------------------------------
    @classmethod
    def generate(cls, params: CkksParams, rotations: Sequence[int]) -> SealBackend:
        ctx = seal_context(params)
        kg = seal.KeyGenerator(ctx)
        pk = seal.PublicKey()
        kg.create_public_key(pk)
        rk = seal.RelinKeys()
        kg.create_relin_keys(rk)
        gk = seal.GaloisKeys()
        steps = sorted({int(r) for r in rotations if r % params.slots})
        if steps:
            # The binding's list overload takes Galois elements, not steps.
            n = params.poly_modulus_degree
            kg.create_galois_keys([_galois_element(st, n) for st in steps], gk)
        keys = SealKeys(public_key=pk, relin_keys=rk, galois_keys=gk, secret_key=kg.secret_key())
        return cls(params, keys, ctx)

    def key_bytes(self, *, secret: bool = False) -> dict[str, bytes]:
        """Serialised key material; the secret key only when asked by name."""
        out: dict[str, bytes] = {}
        for name in ("public_key", "relin_keys", "galois_keys"):
            obj = getattr(self._keys, name)
            if obj is not None:
                out[name] = self._scratch.dump(obj)
        if secret:
            if self._keys._secret_key is None:
                raise KeyMaterialError("this context holds no secret key")
            out["secret_key"] = self._scratch.dump(self._keys._secret_key)
        return out

    @classmethod
    def from_key_bytes(cls, params: CkksParams, blobs: dict[str, bytes]) -> SealBackend:
        ctx = seal_context(params)
        scratch = _Scratch()
        made: dict[str, Any] = {}
        kinds = {
            "public_key": seal.PublicKey,
            "relin_keys": seal.RelinKeys,
            "galois_keys": seal.GaloisKeys,
            "secret_key": seal.SecretKey,
        }
        for name, kind in kinds.items():
            if name in blobs:
                obj = kind()
                try:
                    scratch.fill(obj, ctx, blobs[name])
                except (ValueError, RuntimeError):
                    raise KeyMaterialError("key material does not load under these parameters") from None
                made[name] = obj
        return cls(params, SealKeys(**made), ctx)

    def public_backend(self) -> SealBackend:
        """The same keys without the secret: what the host may hold."""
        keys = SealKeys(
            public_key=self._keys.public_key,
            relin_keys=self._keys.relin_keys,
            galois_keys=self._keys.galois_keys,
        )
        public = SealBackend(self.params, keys, self._ctx)
        public._scratch = self._scratch  # one scratch folder per key set
        return public

    # -- introspection -------------------------------------------------------
    def level(self, ct: Any) -> int:
        return self._level_of[tuple(ct.parms_id())]

    def scale(self, ct: Any) -> float:
        return float(ct.scale)

    def prime(self, level: int) -> int:
        """The prime a rescale at ``level`` divides by."""
        return self._primes[level]

    # -- encryption ------------------------------------------------------------
    def encode(self, values: np.ndarray | float, *, level: int, scale: float) -> Any:
        pt = seal.Plaintext()
        pid = self._parms_ids[level]
        if isinstance(values, np.ndarray):
            self._encoder.encode(values.astype(np.float64).tolist(), pid, scale, pt)
        else:
            self._encoder.encode(float(values), pid, scale, pt)
        return pt

    def encrypt(self, values: np.ndarray, *, level: int, scale: float) -> Any:
        pt = self.encode(values, level=level, scale=scale)
        ct = seal.Ciphertext(self._ctx)
        if self._decryptor is not None:
            self._encryptor.encrypt_symmetric(pt, ct)
            self.counts["encrypt"] += 1
        else:
            self._encryptor.encrypt(pt, ct)
            self.counts["encrypt"] += 1
        return ct

    def encrypt_bytes(self, values: np.ndarray, *, level: int, scale: float) -> bytes:
        """Encrypt straight to bytes; with the secret key, as a seeded (half-size) ciphertext."""
        pt = self.encode(values, level=level, scale=scale)
        self.counts["encrypt"] += 1
        if self._decryptor is not None:
            return self._scratch.dump(self._encryptor.encrypt_symmetric(pt))
        ct = seal.Ciphertext(self._ctx)
        self._encryptor.encrypt(pt, ct)
        return self._scratch.dump(ct)

    def can_decrypt(self) -> bool:
        return self._decryptor is not None

    def decrypt(self, ct: Any) -> np.ndarray:
        if self._decryptor is None:
            raise KeyMaterialError("this context holds no secret key")
        pt = seal.Plaintext()
        self._decryptor.decrypt(ct, pt)
        self.counts["decrypt"] += 1
        return np.asarray(self._encoder.decode_double(pt), dtype=np.float64)

    # -- evaluation --------------------------------------------------------------
    def _aligned(self, a: Any, b: Any) -> tuple[Any, Any]:
        la, lb = self.level(a), self.level(b)
        if la > lb:
            a = self.mod_switch_to(a, lb)
        elif lb > la:
            b = self.mod_switch_to(b, la)
        return a, b

    def add(self, a: Any, b: Any) -> Any:
        a, b = self._aligned(a, b)
        out = seal.Ciphertext(self._ctx)
        self._evaluator.add(a, b, out)
        return out

    def sub(self, a: Any, b: Any) -> Any:
        a, b = self._aligned(a, b)
        out = seal.Ciphertext(self._ctx)
        self._evaluator.sub(a, b, out)
        return out

    def inner_product(self, left: Sequence[Any], right: Sequence[Any]) -> Any:
        """``sum(l * r)`` accumulated in place, then one relinearisation and one rescale."""
        return self.rescale(self.relinearize(self.product_sum(left, right)))

    def product_sum(self, left: Sequence[Any], right: Sequence[Any]) -> Any:
        """``sum(l * r)`` before relinearising: partial sums of disjoint terms add up exactly."""
        return _product_sum(self, left, right)

    def load_product(self, data: bytes) -> Any:
        """Load a product sum saved by :meth:`save` (size 3; :meth:`load` refuses those)."""
        return _load_product(self, data)

    def multiply(self, a: Any, b: Any) -> Any:
        a, b = self._aligned(a, b)
        out = seal.Ciphertext(self._ctx)
        self._evaluator.multiply(a, b, out)
        self.counts["multiply"] += 1
        return out

    def relinearize(self, ct: Any) -> Any:
        if ct.size() <= 2:
            return ct
        out = seal.Ciphertext(self._ctx)
        self._evaluator.relinearize(ct, self._keys.relin_keys, out)
        self.counts["relinearize"] += 1
        return out

    def rescale(self, ct: Any) -> Any:
        if self.level(ct) == 0:
            raise InvalidCiphertext("ciphertext has no level left to rescale")
        out = seal.Ciphertext(self._ctx)
        self._evaluator.rescale_to_next(ct, out)
        return out

    def rotate(self, ct: Any, steps: int) -> Any:
        steps %= self.params.slots
        if steps == 0:
            return ct
        out = seal.Ciphertext(self._ctx)
        self._evaluator.rotate_vector(ct, steps, self._keys.galois_keys, out)
        self.counts["rotate"] += 1
        return out

    def mod_switch_to(self, ct: Any, level: int) -> Any:
        if self.level(ct) == level:
            return ct
        out = seal.Ciphertext(self._ctx)
        self._evaluator.mod_switch_to(ct, self._parms_ids[level], out)
        return out

    def multiply_values(self, ct: Any, values: np.ndarray | float, *, scale: float) -> Any:
        return self.multiply_plain(ct, self.encode(values, level=self.level(ct), scale=scale))

    def multiply_plain(self, ct: Any, pt: Any) -> Any:
        """``ct * pt`` for a plaintext encoded at ``ct``'s level (no rescale)."""
        out = seal.Ciphertext(self._ctx)
        self._evaluator.multiply_plain(ct, pt, out)
        self.counts["multiply_plain"] += 1
        return out

    # -- bytes ----------------------------------------------------------------------
    def save(self, ct: Any) -> bytes:
        return self._scratch.dump(ct)

    def load(self, data: bytes) -> Any:
        ct = seal.Ciphertext(self._ctx)
        try:
            self._scratch.fill(ct, self._ctx, data)
        except (ValueError, RuntimeError, TypeError):
            raise InvalidCiphertext(
                "ciphertext bytes are malformed or not valid for these parameters"
            ) from None
        # SEAL's load already refuses coefficients outside the ring (is_valid_for);
        # a CKKS ciphertext is also always two polynomials in NTT form.
        if tuple(ct.parms_id()) not in self._level_of or ct.size() != 2 or not ct.is_ntt_form():
            raise InvalidCiphertext("ciphertext is not valid for these parameters")
        return ct


def _galois_element(steps: int, n: int) -> int:
    """SEAL's Galois element for a left rotation by ``steps`` (generator 3)."""
    m = 2 * n
    slots = n // 2
    s = steps % slots
    return pow(3, s, m)


def _product_sum(backend: SealBackend, left: Sequence[Any], right: Sequence[Any]) -> Any:
    """``sum(l * r)`` left unrelinearised (size 3) and unrescaled, for sums across blocks."""
    acc = backend.multiply(left[0], right[0])
    for a, b in zip(left[1:], right[1:], strict=True):
        backend._evaluator.add_inplace(acc, backend.multiply(a, b))
    return acc


def _load_product(backend: SealBackend, data: bytes) -> Any:
    """Load a size-3 product sum (a partial gradient sent between host workers)."""
    ct = seal.Ciphertext(backend._ctx)
    try:
        backend._scratch.fill(ct, backend._ctx, data)
    except (ValueError, RuntimeError, TypeError):
        raise InvalidCiphertext("partial product bytes are malformed") from None
    if tuple(ct.parms_id()) not in backend._level_of or ct.size() != 3:
        raise InvalidCiphertext("partial product is not valid for these parameters")
    return ct

"""CKKS parameter sets and their identity.

Runs in: owner, host and enclave. The digest of a parameter set travels with
every ciphertext batch so that a ciphertext made under other parameters is
refused instead of decrypting to garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Largest total coefficient-modulus bits at 128-bit classical security
# (HomomorphicEncryption.org standard, as enforced by SEAL).
_MAX_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CkksParams:
    """One CKKS parameter set.

    ``coeff_mod_bit_sizes`` lists the data primes then the special prime; the
    first prime holds the final result, the middle ones are spent one per
    rescale, so ``levels`` multiplications fit before a refresh.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in _MAX_BITS_128:
            raise ValueError("poly_modulus_degree must be one of 4096, 8192, 16384, 32768")
        if len(self.coeff_mod_bit_sizes) < 3:
            raise ValueError("coeff_mod_bit_sizes needs a first, at least one middle and a special prime")
        if sum(self.coeff_mod_bit_sizes) > _MAX_BITS_128[n]:
            raise ValueError("coeff_mod_bit_sizes exceed 128-bit security for this degree")

    @property
    def slots(self) -> int:
        """Values one ciphertext packs."""
        return self.poly_modulus_degree // 2

    @property
    def top_level(self) -> int:
        """Level of a fresh ciphertext; each rescale lowers it by one, 0 is spent."""
        return len(self.coeff_mod_bit_sizes) - 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)

    def digest(self) -> str:
        """A stable hex identity of these parameters."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(b"cipherloop-ckks-params/v1" + blob).hexdigest()


PRESETS: dict[str, CkksParams] = {
    # 3 rescales at scale 2^35; 15 bits of integer headroom in the first prime;
    # a special prime above the first keeps key-switching noise small. (Scale
    # 2^30 with 4 rescales was 40x noisier once momentum amplified it.)
    "n8192": CkksParams(8192, (50, 35, 35, 35, 60), 35),
    # 7 rescales at scale 2^40: deeper models, more precision, 2x the slots.
    "n16384": CkksParams(16384, (55, 40, 40, 40, 40, 40, 40, 40, 60), 40),
}


def preset(name: str) -> CkksParams:
    """Look up a named parameter preset."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown CKKS preset {name!r}; choose one of {sorted(PRESETS)}") from None

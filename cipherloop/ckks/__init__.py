"""CKKS engine: parameter presets, public/secret contexts, ciphertexts, layouts, batches.

Runs in: owner, host and enclave.
"""

from .batch import CiphertextBatch
from .context import PublicContext, SecretContext
from .layout import Diagonals, Replicated, SampleBlocks, rotations_for_features
from .params import PRESETS, CkksParams, preset
from .vector import Ciphertext, finish, inner, product_sum

__all__ = [
    "PRESETS",
    "Ciphertext",
    "CiphertextBatch",
    "CkksParams",
    "Diagonals",
    "PublicContext",
    "Replicated",
    "SampleBlocks",
    "SecretContext",
    "finish",
    "inner",
    "preset",
    "product_sum",
    "rotations_for_features",
]

"""Encrypted training algorithms: packed kernels, the level planner, the refining loop.

Runs in: host. Talks to the enclave only through :mod:`.enclave_client`.
"""

from .enclave_client import EnclaveClient, EnclaveProcess
from .logistic import (
    LevelPlanner,
    RefineConfig,
    RefineStats,
    compare,
    evaluate,
    refine,
    refresh_model,
    scores,
)
from .model import EncryptedDataset, EncryptedModel

__all__ = [
    "EnclaveClient",
    "EnclaveProcess",
    "EncryptedDataset",
    "EncryptedModel",
    "LevelPlanner",
    "RefineConfig",
    "RefineStats",
    "compare",
    "evaluate",
    "refine",
    "refresh_model",
    "scores",
]

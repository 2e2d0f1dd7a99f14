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
    refresh_model,
    scores,
)
from .loop import refine
from .mlp import scores as network_scores
from .model import EncryptedDataset, EncryptedModel
from .network import EncryptedNetwork

__all__ = [
    "EnclaveClient",
    "EnclaveProcess",
    "EncryptedDataset",
    "EncryptedModel",
    "EncryptedNetwork",
    "LevelPlanner",
    "RefineConfig",
    "RefineStats",
    "compare",
    "evaluate",
    "network_scores",
    "refine",
    "refresh_model",
    "scores",
]

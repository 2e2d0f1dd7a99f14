"""What may leave the enclave, per owner, and how often.

Runs in: enclave. The policy travels with the owner's key and is enforced
here: nothing but the aggregates it names is ever released in the clear, only
over enough samples, only rounded, and only at a bounded rate -- so the host
can't binary-search a secret through repeated evaluations.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import PolicyViolation

METRICS = ("accuracy", "log_loss")
RESOLUTION = 1e-3


@dataclass(frozen=True)
class Policy:
    """The owner's release policy.

    Parameters
    ----------
    release : metrics that may leave in the clear (subset of ``accuracy``, ``log_loss``).
    allow_decision : whether a promote/keep decision between two models may leave.
    min_samples : aggregates over fewer samples are refused.
    max_releases_per_hour : releases (metrics or decisions) per key per hour.
    max_learning_rate : largest step the error operation accepts.
    clip : logits are clipped to ``[-clip, clip]`` before the sigmoid.
    """

    release: tuple[str, ...] = METRICS
    allow_decision: bool = True
    min_samples: int = 16
    max_releases_per_hour: int = 600
    max_learning_rate: float = 100.0
    clip: float = 16.0

    def __post_init__(self) -> None:
        if not set(self.release) <= set(METRICS):
            raise ValueError(f"policy may release only {METRICS}")
        if self.min_samples < 1 or self.max_releases_per_hour < 0:
            raise ValueError("policy limits must be positive")
        if not (0 < self.max_learning_rate < math.inf and 0 < self.clip <= 64):
            raise ValueError("policy bounds out of range")

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": list(self.release),
            "allow_decision": self.allow_decision,
            "min_samples": self.min_samples,
            "max_releases_per_hour": self.max_releases_per_hour,
            "max_learning_rate": self.max_learning_rate,
            "clip": self.clip,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Policy:
        known = {"release", "allow_decision", "min_samples", "max_releases_per_hour",
                 "max_learning_rate", "clip"}
        if not isinstance(doc, dict) or set(doc) - known:
            raise ValueError("malformed policy")
        kw: dict[str, Any] = dict(doc)
        if "release" in kw:
            kw["release"] = tuple(str(m) for m in kw["release"])
        return cls(**kw)


@dataclass
class ReleaseBudget:
    """A sliding one-hour window of releases for one key; time is injectable."""

    per_hour: int
    clock: Callable[[], float] = time.monotonic
    _stamps: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spend(self) -> None:
        now = self.clock()
        with self._lock:
            self._stamps = [t for t in self._stamps if now - t < 3600.0]
            if len(self._stamps) >= self.per_hour:
                raise PolicyViolation("release budget for this hour is spent")
            self._stamps.append(now)


def coarse(value: float) -> float:
    """Round a released aggregate to the policy's resolution."""
    return round(round(value / RESOLUTION) * RESOLUTION, 6)

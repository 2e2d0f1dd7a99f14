"""What may leave the enclave, per owner, and how often.

Runs in: enclave. The policy travels with the owner's key (inside the
attested, HPKE-sealed envelope) and is enforced here: nothing but the
aggregates it names is ever released in the clear, only about hold-out sets
the owner pinned, only over enough samples, only rounded, and only within a
budget of released numbers that survives restarts (see :mod:`.keystore`).

Residual channel (README, "Threat model"): the host still chooses the model
being scored, so every released number can carry information about anything
the host can fold into a model. The budget bounds it: a promote/keep decision
is one bit; a metric rounded to :data:`RESOLUTION` is at most
``log2(range / RESOLUTION)`` bits (:func:`bits_per_release`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

METRICS = ("accuracy", "log_loss")
RESOLUTION = 1e-3
#: Seconds of the sliding window ``max_releases_per_day`` counts over.
WINDOW_S = 86_400.0
#: Largest learning rate a policy may allow; keeps every error encoding inside
#: the modulus whatever the decrypted values (see ``api.py``).
MAX_LEARNING_RATE = 1e3
#: Largest logit clip a policy may set.
MAX_CLIP = 64.0
#: Most hold-out sets one key may pin.
MAX_PINNED = 16


def _digest_pair(pair: Any) -> tuple[str, str]:
    if not (isinstance(pair, list | tuple) and len(pair) == 2):
        raise ValueError("a pinned hold-out is a pair of SHA-256 hex digests")
    out = tuple(str(d) for d in pair)
    for d in out:
        if len(d) != 64 or any(c not in "0123456789abcdef" for c in d):
            raise ValueError("a pinned hold-out is a pair of SHA-256 hex digests")
    return out[0], out[1]


@dataclass(frozen=True)
class Policy:
    """The owner's release policy for one key.

    Parameters
    ----------
    version : monotonically increasing; the enclave refuses an older policy
        (or a different one under the same version) once it has seen a newer one.
    release : metrics that may leave in the clear (subset of ``accuracy``, ``log_loss``).
    allow_decision : whether a promote/keep decision between two models may leave.
    min_samples : aggregates over fewer pinned hold-out samples are refused.
    max_releases_per_day : released numbers (each metric value and each
        decision counts one) per sliding 24 hours, on the host's clock.
    release_budget : released numbers over the key's lifetime; clock-independent.
    max_learning_rate : largest step the error operation accepts.
    clip : logits are clipped to ``[-clip, clip]`` before any non-linearity.
    holdouts : pinned hold-out sets, each ``(features digest, labels digest)``
        as :meth:`cipherloop.ckks.CiphertextBatch.digest` computes them.
    """

    version: int = 0
    release: tuple[str, ...] = METRICS
    allow_decision: bool = True
    min_samples: int = 16
    max_releases_per_day: int = 96
    release_budget: int = 10_000
    max_learning_rate: float = 100.0
    clip: float = 16.0
    holdouts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not set(self.release) <= set(METRICS):
            raise ValueError(f"policy may release only {METRICS}")
        for name in ("version", "min_samples", "max_releases_per_day", "release_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
                raise ValueError(f"policy field {name} must be an integer in [0, 2**53)")
        if self.min_samples < 1:
            raise ValueError("min_samples must be positive")
        if not isinstance(self.allow_decision, bool):
            raise ValueError("allow_decision must be a boolean")
        lr, clip = self.max_learning_rate, self.clip
        if not (isinstance(lr, int | float) and isinstance(clip, int | float)
                and 0 < lr <= MAX_LEARNING_RATE and 0 < clip <= MAX_CLIP):
            raise ValueError("policy bounds out of range")
        if len(self.holdouts) > MAX_PINNED:
            raise ValueError(f"a policy pins at most {MAX_PINNED} hold-out sets")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "release": list(self.release),
            "allow_decision": self.allow_decision,
            "min_samples": self.min_samples,
            "max_releases_per_day": self.max_releases_per_day,
            "release_budget": self.release_budget,
            "max_learning_rate": float(self.max_learning_rate),
            "clip": float(self.clip),
            "holdouts": [list(p) for p in self.holdouts],
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Policy:
        """Parse the owner's policy; unknown fields and wrong types raise ``ValueError``."""
        known = set(cls.__dataclass_fields__)
        if not isinstance(doc, dict) or set(doc) - known:
            raise ValueError("malformed policy")
        kw: dict[str, Any] = dict(doc)
        try:
            if "release" in kw:
                if not isinstance(kw["release"], list | tuple):
                    raise ValueError("malformed policy")
                kw["release"] = tuple(str(m) for m in kw["release"])
            if "holdouts" in kw:
                if not isinstance(kw["holdouts"], list | tuple):
                    raise ValueError("malformed policy")
                kw["holdouts"] = tuple(_digest_pair(p) for p in kw["holdouts"])
            return cls(**kw)
        except TypeError:
            raise ValueError("malformed policy") from None

    def pins(self, features_digest: str, labels_digest: str) -> bool:
        """Whether this pair of batches is a hold-out set the owner pinned."""
        return (features_digest, labels_digest) in self.holdouts

    def bits_per_day(self, holdout_samples: int, n_classes: int = 2) -> float:
        """Upper bound on what a day's releases can carry, in bits (README, "Threat model").

        Each released number is one of finitely many values: a decision one of
        two; an accuracy over ``n`` samples one of ``n + 1``; a log-loss rounded
        to :data:`RESOLUTION` on ``[0, clip + log 2]`` one of about
        ``(clip + log 2) / RESOLUTION`` (``[0, 2 clip + log K]`` for ``K > 2``
        classes, whose logits are each clipped).
        """
        per = 1.0 if self.allow_decision else 0.0
        if "accuracy" in self.release:
            per = max(per, math.log2(holdout_samples + 1))
        if "log_loss" in self.release:
            top = self.clip + math.log(2) if n_classes <= 2 else 2 * self.clip + math.log(n_classes)
            per = max(per, math.log2(top / RESOLUTION + 1))
        return per * self.max_releases_per_day


def coarse(value: float) -> float:
    """Round a released aggregate to the policy's resolution."""
    return round(round(value / RESOLUTION) * RESOLUTION, 6)

"""The owner's refinement policy and the two decisions it drives: when, and how fast.

Runs in: host. The loop that runs rounds (:mod:`.worker`) and the policy that
decides them are separate: :func:`trigger` says whether new data starts a
round, :meth:`RefinePolicy.learning_rate_for` gives a round its step size.
Both are pure functions of wire-safe values, so they are tested without a
database or a clock.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

LrSchedule = Literal["constant", "decay"]
Metric = Literal["log_loss", "accuracy"]
Trigger = Literal["samples", "interval", "manual"]


@dataclass(frozen=True, kw_only=True)
class RefinePolicy:
    """When to refine, with which hyperparameters, and what may be released.

    Parameters
    ----------
    trigger_min_samples : int or None
        Start a round once this many new (not yet used) samples have arrived.
    trigger_interval_s : float or None
        Start a round when this many seconds passed since the last one and
        there is new data. With neither trigger set, rounds start only on
        the owner's request.
    epochs : int
        Passes over the round's new data.
    batch_size : int or None
        Mini-batch size; ``None`` is full-batch gradient descent.
    learning_rate : float
        Step size of the first round.
    lr_schedule : {"constant", "decay"}
        ``decay`` multiplies the step size by ``lr_decay`` every completed round.
    lr_decay : float
        Per-round factor in (0, 1].
    momentum : float
        Nesterov momentum in [0, 1).
    metric : {"log_loss", "accuracy"}
        What the enclave compares candidate and current on the hold-out set.
    release_metric : bool
        Whether the coarse hold-out metric may be kept and shown; otherwise
        only the promote/keep decision is recorded.
    """

    trigger_min_samples: int | None = None
    trigger_interval_s: float | None = None
    epochs: int = 1
    batch_size: int | None = None
    learning_rate: float = 1.0
    lr_schedule: LrSchedule = "constant"
    lr_decay: float = 1.0
    momentum: float = 0.9
    metric: Metric = "log_loss"
    release_metric: bool = False

    def __post_init__(self) -> None:
        if self.trigger_min_samples is not None and self.trigger_min_samples < 1:
            raise ValueError("trigger_min_samples must be at least 1")
        if self.trigger_interval_s is not None and not (
            0 < self.trigger_interval_s < math.inf
        ):
            raise ValueError("trigger_interval_s must be a positive number of seconds")
        if self.epochs < 1 or self.epochs > 1000:
            raise ValueError("epochs must be between 1 and 1000")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be positive")
        if not 0 < self.learning_rate < 1e3:
            raise ValueError("learning_rate must be in (0, 1000)")
        if self.lr_schedule not in ("constant", "decay"):
            raise ValueError("lr_schedule must be 'constant' or 'decay'")
        if not 0 < self.lr_decay <= 1:
            raise ValueError("lr_decay must be in (0, 1]")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if self.metric not in ("log_loss", "accuracy"):
            raise ValueError("metric must be 'log_loss' or 'accuracy'")

    def learning_rate_for(self, round_index: int) -> float:
        """Step size of the ``round_index``-th completed round (0-based).

        Examples
        --------
        >>> RefinePolicy(learning_rate=1.0, lr_schedule="decay", lr_decay=0.5).learning_rate_for(2)
        0.25
        """
        if self.lr_schedule == "constant":
            return self.learning_rate
        return self.learning_rate * self.lr_decay ** max(0, round_index)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: Any) -> RefinePolicy:
        """Rebuild from any object with the policy's attributes (a database row)."""
        return cls(**{k: getattr(row, k) for k in cls.__dataclass_fields__})


def trigger(
    policy: RefinePolicy,
    *,
    new_uploads: int,
    new_samples: int,
    last_round_at: datetime,
    now: datetime,
) -> Trigger | None:
    """Whether new data starts a round now, and why.

    Parameters
    ----------
    policy : RefinePolicy
    new_uploads, new_samples : int
        Data uploads (and their samples) no round has used yet.
    last_round_at : datetime
        When the last round was created (the model's creation, before any).
    now : datetime

    Returns
    -------
    "samples", "interval" or None
        ``None``: no round now. Without new data there is never a round.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> t = datetime(2025, 1, 1, tzinfo=UTC)
    >>> trigger(RefinePolicy(trigger_min_samples=100), new_uploads=2, new_samples=128,
    ...         last_round_at=t, now=t)
    'samples'
    """
    if new_uploads < 1:
        return None
    if policy.trigger_min_samples is not None and new_samples >= policy.trigger_min_samples:
        return "samples"
    interval = policy.trigger_interval_s
    if interval is not None and (now - last_round_at).total_seconds() >= interval:
        return "interval"
    return None

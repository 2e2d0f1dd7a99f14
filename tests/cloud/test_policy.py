"""The refinement policy: validation, triggers and the learning-rate schedule (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cipherloop.cloud.policy import RefinePolicy, trigger

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _fire(policy: RefinePolicy, *, uploads: int = 1, samples: int = 10,
          after_s: float = 0.0) -> str | None:
    return trigger(policy, new_uploads=uploads, new_samples=samples, last_round_at=T0,
                   now=T0 + timedelta(seconds=after_s))


def test_sample_trigger_fires_at_threshold() -> None:
    p = RefinePolicy(trigger_min_samples=100)
    assert _fire(p, samples=99) is None
    assert _fire(p, samples=100) == "samples"


def test_interval_trigger_fires_after_interval_with_new_data() -> None:
    p = RefinePolicy(trigger_interval_s=60)
    assert _fire(p, after_s=59) is None
    assert _fire(p, after_s=60) == "interval"


def test_no_new_data_never_triggers() -> None:
    p = RefinePolicy(trigger_min_samples=1, trigger_interval_s=1)
    assert _fire(p, uploads=0, samples=0, after_s=1e6) is None


def test_without_triggers_rounds_are_manual_only() -> None:
    assert _fire(RefinePolicy(), samples=10**6, after_s=1e9) is None


def test_either_trigger_suffices() -> None:
    p = RefinePolicy(trigger_min_samples=1000, trigger_interval_s=10)
    assert _fire(p, samples=5, after_s=11) == "interval"
    assert _fire(p, samples=1000, after_s=0) == "samples"


def test_learning_rate_schedules() -> None:
    assert RefinePolicy(learning_rate=0.5).learning_rate_for(7) == 0.5
    decay = RefinePolicy(learning_rate=1.0, lr_schedule="decay", lr_decay=0.5)
    assert [decay.learning_rate_for(k) for k in range(3)] == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("bad", [
    {"trigger_min_samples": 0}, {"trigger_interval_s": 0}, {"epochs": 0},
    {"batch_size": 0}, {"learning_rate": 0}, {"learning_rate": 1e4}, {"lr_decay": 0},
    {"lr_decay": 1.5}, {"momentum": 1.0}, {"lr_schedule": "cosine"}, {"metric": "auc"},
])
def test_invalid_policies_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RefinePolicy(**bad)

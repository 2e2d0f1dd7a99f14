"""The enclave's keys: one entry per owner key id, each with its policy.

Runs in: enclave. :meth:`KeyStore.install` is the one place a secret key
arrives, whether from the local development hand-over or from attested,
HPKE-wrapped provisioning; nothing else creates an entry.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..ckks import SecretContext
from ..errors import EnclaveError, KeyMaterialError
from .policy import Policy, ReleaseBudget


@dataclass
class KeyEntry:
    context: SecretContext
    policy: Policy
    budget: ReleaseBudget

    def __repr__(self) -> str:
        return f"KeyEntry(key_id={self.context.key_id!r}, secret=<redacted>)"


class KeyStore:
    """Secret contexts by key id. Holds no global state: one per enclave process."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._entries: dict[str, KeyEntry] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def install(self, secret: bytes, policy: Policy) -> str:
        """Load a serialised secret context under its key id and attach its policy."""
        try:
            ctx = SecretContext.load_secret(secret)
        except KeyMaterialError:
            raise EnclaveError("secret key material is not loadable") from None
        budget = ReleaseBudget(policy.max_releases_per_hour)
        if self._clock is not None:
            budget.clock = self._clock
        with self._lock:
            self._entries[ctx.key_id] = KeyEntry(ctx, policy, budget)
        return ctx.key_id

    def get(self, key_id: object) -> KeyEntry:
        with self._lock:
            entry = self._entries.get(key_id) if isinstance(key_id, str) else None
        if entry is None:
            raise EnclaveError("no key with this id is provisioned")
        return entry

    def key_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

"""The enclave's keys: one entry per owner key id, with its policy and durable release state.

Runs in: enclave. :meth:`KeyStore.install` is the one place a secret key
arrives, whether from the local development hand-over or from attested,
HPKE-wrapped provisioning; nothing else creates an entry.

An entry's :class:`KeyState` -- the policy, the numbers released so far and
whether the key is suspended -- is written (sealed, through ``persist``)
*before* anything it allows leaves the enclave, so a restarted enclave
continues the budget instead of starting a fresh one. Rolling the sealed file
back to an older copy is the one thing this cannot see without a trusted
monotonic counter (README, "Threat model").
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..ckks import SecretContext
from ..errors import BudgetExhausted, KeyMaterialError, KeySuspended, StalePolicy, UnknownKey
from .policy import WINDOW_S, Policy


@dataclass(frozen=True)
class KeyState:
    """What the enclave must remember about a key across restarts."""

    policy: Policy
    spent_total: int = 0
    stamps: tuple[float, ...] = ()
    suspended: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.to_dict(), "spent_total": self.spent_total,
                "stamps": list(self.stamps), "suspended": self.suspended}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> KeyState:
        stamps = doc.get("stamps", [])
        spent = doc.get("spent_total", 0)
        if not (isinstance(stamps, list) and isinstance(spent, int)):
            raise ValueError("malformed key state")
        return cls(Policy.from_dict(dict(doc["policy"])), int(spent),
                   tuple(float(t) for t in stamps), bool(doc.get("suspended", False)))


#: ``persist(context, secret key bytes, state)``: seal and write, durably, or raise.
Persist = Callable[[SecretContext, bytes, KeyState], None]


@dataclass
class KeyEntry:
    """One provisioned key: its secret context and its durable state."""

    context: SecretContext
    state: KeyState
    _secret: bytes = field(repr=False)
    _persist: Persist | None = field(repr=False, default=None)
    _clock: Callable[[], float] = field(repr=False, default=time.time)
    _lock: threading.Lock = field(repr=False, default_factory=threading.Lock)

    def __repr__(self) -> str:
        return f"KeyEntry(key_id={self.context.key_id!r}, secret=<redacted>)"

    @property
    def policy(self) -> Policy:
        return self.state.policy

    def check_open(self) -> None:
        """Refuse every operation on a suspended key."""
        if self.state.suspended:
            raise KeySuspended("this key is suspended after an enclave fault; re-provision it")

    def _commit(self, state: KeyState) -> None:
        if self._persist is not None:
            self._persist(self.context, self._secret, state)
        self.state = state

    def spend(self, numbers: int) -> None:
        """Charge ``numbers`` released values, durably, before they are released.

        The sliding window runs on the host's clock (a host that moves it
        forward refills the window, never the lifetime ``release_budget``);
        stamps "in the future" stay in the window, so moving it back refills
        nothing.
        """
        with self._lock:
            self.check_open()
            now = self._clock()
            window = tuple(t for t in self.state.stamps if t > now - WINDOW_S)
            policy = self.state.policy
            if (len(window) + numbers > policy.max_releases_per_day
                    or self.state.spent_total + numbers > policy.release_budget):
                raise BudgetExhausted("the owner's release budget is spent")
            self._commit(replace(self.state, spent_total=self.state.spent_total + numbers,
                                 stamps=window + (now,) * numbers))

    def suspend(self) -> None:
        """Stop serving this key until the owner re-provisions it (after an enclave fault)."""
        with self._lock:
            self._commit(replace(self.state, suspended=True))


class KeyStore:
    """Secret contexts by key id. Holds no global state: one per enclave process.

    Parameters
    ----------
    persist : seals and writes a key's state; ``None`` keeps state in memory
        only (unit tests of the operations).
    clock : wall-clock seconds for the release window (injectable for tests).
    """

    def __init__(self, persist: Persist | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._entries: dict[str, KeyEntry] = {}
        self._lock = threading.Lock()
        self._persist = persist
        self._clock = clock

    def install(self, secret: bytes, policy: Policy, *, state: KeyState | None = None,
                restoring: bool = False) -> str:
        """Load a serialised secret context under its key id and attach its policy.

        A new policy must carry a higher version than the one this key holds
        (the same version only for the same policy). Provisioning is the
        owner's act, so it also lifts a suspension; the release history
        carries over. With ``restoring``, ``state`` is the sealed state read
        back at start and is taken as it is.

        Raises
        ------
        KeyMaterialError
            The secret key does not load.
        StalePolicy
            ``policy`` is older than, or conflicts with, the one held.
        """
        try:
            ctx = SecretContext.load_secret(secret)
        except KeyMaterialError:
            raise KeyMaterialError("secret key material is not loadable") from None
        with self._lock:
            held = self._entries.get(ctx.key_id)
            if restoring:
                new = state if state is not None else KeyState(policy)
            else:
                old = held.state if held is not None else state
                if old is not None and (policy.version < old.policy.version or (
                        policy.version == old.policy.version and policy != old.policy)):
                    raise StalePolicy("a newer policy is in force for this key")
                new = (KeyState(policy) if old is None
                       else replace(old, policy=policy, suspended=False))
                if self._persist is not None:
                    self._persist(ctx, secret, new)
            if held is not None:
                with held._lock:
                    held.state = new
            else:
                self._entries[ctx.key_id] = KeyEntry(ctx, new, secret, self._persist, self._clock)
        return ctx.key_id

    def get(self, key_id: object) -> KeyEntry:
        with self._lock:
            entry = self._entries.get(key_id) if isinstance(key_id, str) else None
        if entry is None:
            raise UnknownKey("no key with this id is provisioned")
        return entry

    def key_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

"""Attested key provisioning, relayed from an owner to the service's enclave.

Runs in: host. The service is only a pipe here: the owner's challenge goes
to the enclave, the enclave's offer (evidence and an ephemeral public key)
comes back unchanged, and the owner's HPKE envelope -- sealed to that
attested key, unreadable to the host -- goes to the enclave. Verification
happens on the owner's side (:func:`cipherloop.client.provisioning.provision`).

What the relay adds is tenancy: it remembers which tenant opened each
session, so a tenant can neither deliver an envelope into another tenant's
session nor take over a session id another tenant has open. The enclave
keeps a few pending sessions only; this book is bounded and forgets
sessions after ``ttl_s`` too. Every refusal says the same few words and
never carries challenge or envelope bytes.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import (
    AttestationError,
    EnclaveError,
    EnclaveUnavailable,
    ProvisioningFailed,
    StalePolicy,
)
from .crud import Conflict

NONCE_BYTES = 32
SESSION_ID_BYTES = 16
PROVISIONING_FAILED = ("provisioning failed: the enclave did not accept this envelope "
                       "for this session (unknown, expired or used session, or a damaged envelope)")
ATTESTATION_REFUSED = "attestation failed: the enclave did not answer this challenge"
SESSION_IN_USE = "this session id is in use; start again with a fresh one"
STALE_POLICY = ("the enclave holds a newer policy for this key; provision again with a higher "
                "policy version")


class EnclaveLink(Protocol):
    """The enclave operations the relay needs (:class:`~cipherloop.learn.EnclaveClient` has them)."""

    def hello(self) -> dict[str, Any]: ...

    def attest(self, nonce: bytes, session_id: bytes) -> dict[str, Any]: ...

    def provision(self, session_id: bytes, envelope: bytes) -> str: ...


class Relay:
    """Passes challenges and envelopes between owners and one enclave.

    Parameters
    ----------
    link : EnclaveLink or None
        The enclave; ``None`` (a service without an enclave) answers every
        call with :class:`~cipherloop.errors.EnclaveUnavailable`.
    max_sessions : int
        Open sessions remembered; the oldest is forgotten first.
    ttl_s : float
        A session not completed within this time is forgotten.
    clock : callable
        Monotonic seconds; injectable for tests.

    Examples
    --------
    >>> Relay(None).attest(tenant_id="t", nonce=bytes(32), session_id=bytes(16))
    Traceback (most recent call last):
    ...
    cipherloop.errors.EnclaveUnavailable: this service runs without an enclave
    """

    def __init__(self, link: EnclaveLink | None, *, max_sessions: int = 1024,
                 per_tenant: int = 8, ttl_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._link = link
        self._max = max_sessions
        self._per_tenant = per_tenant
        self._ttl = ttl_s
        self._clock = clock
        self._sessions: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Relay({self._link!r})"

    def _require(self) -> EnclaveLink:
        if self._link is None:
            raise EnclaveUnavailable("this service runs without an enclave")
        return self._link

    def _expire(self, now: float) -> None:
        while self._sessions:
            _, (_, opened) = next(iter(self._sessions.items()))
            if now - opened < self._ttl and len(self._sessions) <= self._max:
                return
            self._sessions.popitem(last=False)

    def info(self) -> dict[str, Any]:
        """The enclave's platform and measurement (hex), and whether it is simulated."""
        hello = self._require().hello()
        platform = str(hello.get("platform", ""))
        return {"platform": platform, "measurement": str(hello.get("measurement", "")),
                "simulated": platform == "sim"}

    def attest(self, *, tenant_id: str, nonce: bytes, session_id: bytes) -> dict[str, Any]:
        """The enclave's offer for this challenge, exactly as the enclave made it.

        Raises
        ------
        ValueError
            ``nonce`` is not 32 bytes or ``session_id`` not 16.
        Conflict
            Another tenant has this session id open.
        AttestationError
            The enclave refused the challenge.
        EnclaveUnavailable
        """
        if len(nonce) != NONCE_BYTES or len(session_id) != SESSION_ID_BYTES:
            raise ValueError("nonce must be 32 bytes and session_id 16 bytes")
        link = self._require()
        with self._lock:
            now = self._clock()
            self._expire(now)
            holder = self._sessions.get(session_id)
            if holder is not None and holder[0] != tenant_id:
                raise Conflict(SESSION_IN_USE)
            self._sessions[session_id] = (tenant_id, now)
            self._sessions.move_to_end(session_id)
            # A tenant's new session evicts only that tenant's oldest, never another's.
            own = [sid for sid, (t, _) in self._sessions.items() if t == tenant_id]
            for sid in own[: max(0, len(own) - self._per_tenant)]:
                del self._sessions[sid]
            self._expire(now)
        try:
            return link.attest(nonce, session_id)
        except EnclaveError:  # its words may name enclave internals; ours are enough
            with self._lock:
                self._sessions.pop(session_id, None)
            raise AttestationError(ATTESTATION_REFUSED) from None

    def provision(self, *, tenant_id: str, session_id: bytes, envelope: bytes) -> str:
        """Deliver the envelope into the tenant's own open session; the installed key's id.

        Raises
        ------
        ProvisioningFailed
            The session is not one this tenant opened (or it expired), or the
            enclave refused the envelope. The same message for every cause.
        EnclaveUnavailable
        """
        link = self._require()
        with self._lock:
            self._expire(self._clock())
            holder = self._sessions.get(session_id)
            # A session is used once, whatever the outcome: the enclave drops it too.
            if holder is None or holder[0] != tenant_id:
                raise ProvisioningFailed(PROVISIONING_FAILED)
            del self._sessions[session_id]
        try:
            return link.provision(session_id, envelope)
        except StalePolicy:  # the owner's own envelope opened: it may know why
            raise Conflict(STALE_POLICY) from None
        except (EnclaveError, AttestationError):
            raise ProvisioningFailed(PROVISIONING_FAILED) from None

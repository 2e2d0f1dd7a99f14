"""The enclave, seen from outside: what it is, and attested key provisioning through the service.

Runs in: host. Owner tokens only. The owner asks what enclave serves it
(``GET /v1/enclave``), sends a challenge (``POST /v1/enclave/attest``; the
offer comes back as CBOR, byte for byte the enclave's), verifies it at home,
and sends the HPKE envelope (``POST /v1/enclave/provision``). The service
can read neither the key inside the envelope nor which key it is until the
enclave says; :mod:`..relay` keeps each session to the tenant that opened it.
"""

from __future__ import annotations

import base64
import binascii

import cbor2
from fastapi import APIRouter, HTTPException, Response, status

from .. import crud
from ..deps import OwnerDep, ServicesDep, SessionDep
from ..relay import NONCE_BYTES, SESSION_ID_BYTES
from ..schemas import AttestIn, EnclaveInfo, ProvisionedKey, ProvisionIn
from ..wire import CBOR
from . import binary_response

router = APIRouter(tags=["enclave"])

NOT_REGISTERED = "key is not registered by this tenant"


def _b64(text: str, name: str, *, size: int | None = None) -> bytes:
    """Standard base64 to bytes, or a 422 that names the field and never its value."""
    want = f"base64 of {size} bytes" if size is not None else "non-empty base64"
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name} must be {want}") from None
    if (size is not None and len(raw) != size) or not raw:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name} must be {want}")
    return raw


@router.get("/v1/enclave")
def enclave_info(principal: OwnerDep, services: ServicesDep) -> EnclaveInfo:
    """The enclave's platform and measurement; ``simulated`` is true for the sim platform.

    A simulated enclave is NOT a TEE: it protects nothing from this host.
    """
    return EnclaveInfo.model_validate(services.relay.info())


@router.post("/v1/enclave/attest", response_class=Response,
             responses=binary_response(CBOR, "cbor2.dumps(offer): the enclave's offer, unchanged"))
def attest(body: AttestIn, principal: OwnerDep, services: ServicesDep) -> Response:
    """Relay the owner's challenge; answer the enclave's offer as CBOR (owner only).

    ``nonce`` is base64 of 32 fresh random bytes, ``session_id`` base64 of 16.
    Verify the offer before sending anything (``cipherloop.client.provisioning``).
    """
    nonce = _b64(body.nonce, "nonce", size=NONCE_BYTES)
    session_id = _b64(body.session_id, "session_id", size=SESSION_ID_BYTES)
    offer = services.relay.attest(tenant_id=principal.tenant_id, nonce=nonce,
                                  session_id=session_id)
    return Response(bytes(cbor2.dumps(offer)), media_type=CBOR)


@router.post("/v1/enclave/provision", responses={
    400: {"description": "The enclave did not accept the envelope for this session"},
    409: {"description": f"{NOT_REGISTERED}; or the enclave holds a newer policy for this key"}})
def provision(body: ProvisionIn, principal: OwnerDep, session: SessionDep,
              services: ServicesDep) -> ProvisionedKey:
    """Deliver the owner's HPKE envelope for a session it opened; the installed key's id.

    The key must be one the tenant registered (``POST /v1/contexts``) first.
    """
    session_id = _b64(body.session_id, "session_id", size=SESSION_ID_BYTES)
    envelope = _b64(body.envelope, "envelope")
    key_id = services.relay.provision(tenant_id=principal.tenant_id, session_id=session_id,
                                      envelope=envelope)
    # The key came out of this caller's own envelope, so the caller holds its
    # secret: saying it is not registered here tells it nothing it lacks, and
    # the answer is the same whether no tenant or another one registered it.
    # The enclave keeps the key regardless; this service never uses it.
    if crud.context_for_key(session, tenant_id=principal.tenant_id, key_id=key_id) is None:
        raise crud.Conflict(NOT_REGISTERED)
    return ProvisionedKey(key_id=key_id)

"""A typed client of the cipherloop service, for owners and contributors.

Runs in: owner (and contributors, with a contributor token). One method per
endpoint, JSON in and out, ciphertexts as raw bytes. Refusals come back as
:class:`ServiceError` with the service's own message; an unreachable service
is :class:`ServiceUnavailable`. It also speaks the attested-provisioning
relay, so :func:`cipherloop.client.provisioning.provision` works through it.
"""

from __future__ import annotations

import base64
from typing import Any

import cbor2
import httpx

from ..errors import CipherloopError


class ServiceError(CipherloopError):
    """The service refused a request (4xx/5xx); ``status`` is the HTTP status."""

    def __init__(self, status: int, detail: str, *, path: str = "") -> None:
        super().__init__(f"service answered {status}: {detail}")
        self.status = status
        self.detail = detail
        self.path = path


class ServiceUnavailable(CipherloopError):
    """The service could not be reached."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ServiceClient:
    """Talks to one service with one bearer token.

    Parameters
    ----------
    base_url : e.g. ``http://127.0.0.1:8000``.
    token : an owner, contributor or predict token.
    timeout : seconds per request (uploads of large data sets take a while).
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 300.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"ServiceClient({str(self._http.base_url)!r}, token=<redacted>)"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------
    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise ServiceUnavailable(f"service not reachable at {self._http.base_url}: "
                                     f"{type(exc).__name__}") from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except (ValueError, AttributeError):
                detail = r.text
            if isinstance(detail, list):  # schema checks: "where: what" for each
                detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: "
                                   f"{d.get('msg', '')}" for d in detail if isinstance(d, dict))
            raise ServiceError(r.status_code, str(detail)[:500], path=path)
        return r

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._send(method, path, **kw).json()

    def _bytes(self, path: str, body: bytes, *, params: dict[str, str] | None = None,
               content_type: str = "application/octet-stream") -> Any:
        return self._json("POST", path, content=body, params=params,
                          headers={"Content-Type": content_type})

    # -- tenants and tokens ---------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/healthz"))

    def create_tenant(self, name: str) -> dict[str, Any]:
        """Admin only: a tenant and its owner token (shown once)."""
        return dict(self._json("POST", "/v1/admin/tenants", json={"name": name}))

    def whoami(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/whoami"))

    def create_token(self, role: str, label: str = "") -> dict[str, Any]:
        return dict(self._json("POST", "/v1/tokens", json={"role": role, "label": label}))

    # -- enclave relay (attested provisioning) ------------------------------------------
    def enclave_info(self) -> dict[str, Any]:
        return dict(self._json("GET", "/v1/enclave"))

    def attest(self, nonce: bytes, session_id: bytes) -> dict[str, Any]:
        r = self._send("POST", "/v1/enclave/attest",
                       json={"nonce": _b64(nonce), "session_id": _b64(session_id)})
        offer = cbor2.loads(r.content)
        if not isinstance(offer, dict):
            raise ServiceError(502, "the service relayed a malformed offer")
        return offer

    def provision(self, session_id: bytes, envelope: bytes) -> str:
        doc = self._json("POST", "/v1/enclave/provision",
                         json={"session_id": _b64(session_id), "envelope": _b64(envelope)})
        return str(doc["key_id"])

    # -- contexts, models, versions ----------------------------------------------------
    def register_context(self, public_context: bytes) -> dict[str, Any]:
        return dict(self._bytes("/v1/contexts", public_context))

    def contexts(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/v1/contexts"))

    def context_blob(self, context_id: str) -> bytes:
        return self._send("GET", f"/v1/contexts/{context_id}/blob").content

    def create_model(self, name: str, context_id: str, n_features: int,
                     policy: dict[str, Any],
                     preprocessing: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "context_id": context_id,
                                "n_features": n_features, "policy": policy}
        if preprocessing is not None:
            body["preprocessing"] = preprocessing
        return dict(self._json("POST", "/v1/models", json=body))

    def delete_model(self, model_id: str) -> None:
        self._send("DELETE", f"/v1/models/{model_id}")

    def preprocessing(self, model_id: str) -> dict[str, Any]:
        """What to apply to raw features before encrypting (any of the tenant's tokens)."""
        return dict(self._json("GET", f"/v1/models/{model_id}/preprocessing"))

    def model(self, model_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/v1/models/{model_id}"))

    def upload_version(self, model_id: str, model: bytes) -> dict[str, Any]:
        return dict(self._bytes(f"/v1/models/{model_id}/versions", model))

    def versions(self, model_id: str) -> list[dict[str, Any]]:
        return list(self._json("GET", f"/v1/models/{model_id}/versions"))

    def version_blob(self, model_id: str, version_id: str) -> bytes:
        return self._send("GET", f"/v1/models/{model_id}/versions/{version_id}/blob").content

    def set_current(self, model_id: str, version_id: str) -> dict[str, Any]:
        return dict(self._json("PUT", f"/v1/models/{model_id}/current",
                               json={"version_id": version_id}))

    # -- data, rounds, inference -------------------------------------------------------
    def upload_samples(self, model_id: str, body: bytes, *, holdout: bool = False) -> dict[str, Any]:
        return dict(self._bytes(f"/v1/models/{model_id}/uploads", body,
                                params={"kind": "holdout" if holdout else "data"},
                                content_type="application/cbor"))

    def uploads(self, model_id: str) -> list[dict[str, Any]]:
        return list(self._json("GET", f"/v1/models/{model_id}/uploads"))

    def rounds(self, model_id: str) -> list[dict[str, Any]]:
        return list(self._json("GET", f"/v1/models/{model_id}/rounds"))

    def start_round(self, model_id: str) -> dict[str, Any]:
        return dict(self._json("POST", f"/v1/models/{model_id}/rounds"))

    def predict(self, model_id: str, features: bytes, *, version_id: str | None = None) -> bytes:
        params = {"version_id": version_id} if version_id else None
        return self._send("POST", f"/v1/models/{model_id}/predict", content=features,
                          params=params,
                          headers={"Content-Type": "application/octet-stream"}).content

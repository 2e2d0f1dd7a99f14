"""HTTP routes, one router per module.

Runs in: host. Shared helpers: tenant-scoped lookups that answer 404 for a
foreign id exactly as for a missing one, and the OpenAPI description of
binary request bodies.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status
from sqlalchemy.orm import Session

from .. import crud
from ..db import Model

NOT_FOUND = "not found"


def not_found() -> HTTPException:
    """The one 404: a foreign id looks exactly like a missing one."""
    return HTTPException(status.HTTP_404_NOT_FOUND, NOT_FOUND)


def model_or_404(session: Session, *, tenant_id: str, model_id: str) -> Model:
    model = crud.get_model(session, tenant_id=tenant_id, model_id=model_id)
    if model is None:
        raise not_found()
    return model


def binary_body(media_type: str, description: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a raw binary request body."""
    return {"requestBody": {"required": True, "description": description, "content": {
        media_type: {"schema": {"type": "string", "format": "binary"}}}}}


def binary_response(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    """``responses`` documenting a raw binary 200 response."""
    return {200: {"description": description,
                  "content": {media_type: {"schema": {"type": "string", "format": "binary"}}}}}

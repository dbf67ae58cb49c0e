"""The queen's own bodies: what the keeper and other clients send it and get back."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ApiKey", "CreateKey", "CreatedKey"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateKey(BaseModel):
    """`POST /v1/keys`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    scope: Literal["inference", "admin"] = "inference"
    rpm: int | None = Field(default=None, ge=1, description="requests a minute, unlimited if unset")
    tpm: int | None = Field(default=None, ge=1, description="tokens a minute, unlimited if unset")


class ApiKey(_Wire):
    """A key as `GET /v1/keys` lists it: never the secret, only its first characters."""

    name: str
    prefix: str
    scope: Literal["inference", "admin"]
    rpm: int | None = None
    tpm: int | None = None
    created_at: float


class CreatedKey(ApiKey):
    """`POST /v1/keys`' answer: the only time the secret is shown."""

    key: str

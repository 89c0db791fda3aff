"""Request and response bodies of the items API."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ItemCreate(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)


class ItemUpdate(BaseModel):
    """A partial update: only the fields present in the body change."""

    title: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)

    @field_validator("title")
    @classmethod
    def _title_is_not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("title cannot be null; leave it out to keep the current title")
        return value


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    tenant_id: str
    owner_id: str
    title: str
    description: str | None
    created_at: datetime
    updated_at: datetime

"""CRUD for items. Every query is filtered by the caller's tenant: other tenants' rows are 404."""

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import select

from app.api.deps import CurrentUserDep, SessionDep
from app.db.models import Item
from app.schemas.item import ItemCreate, ItemRead, ItemUpdate

router = APIRouter(prefix="/items", tags=["items"])


def _get_owned_item(session: SessionDep, tenant_id: str, item_id: int) -> Item:
    item = session.scalar(select(Item).where(Item.id == item_id, Item.tenant_id == tenant_id))
    if item is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="Item not found")
    return item


@router.post("", status_code=status.HTTP_201_CREATED)
def create_item(body: ItemCreate, session: SessionDep, user: CurrentUserDep) -> ItemRead:
    item = Item(tenant_id=user.tenant_id, owner_id=user.id, **body.model_dump())
    session.add(item)
    session.commit()
    return ItemRead.model_validate(item)


@router.get("")
def list_items(
    session: SessionDep,
    user: CurrentUserDep,
    limit: int = Query(default=50, ge=1, le=200),
    offset: int = Query(default=0, ge=0),
) -> list[ItemRead]:
    rows = session.scalars(
        select(Item)
        .where(Item.tenant_id == user.tenant_id)
        .order_by(Item.id)
        .limit(limit)
        .offset(offset)
    )
    return [ItemRead.model_validate(row) for row in rows]


@router.get("/{item_id}")
def read_item(item_id: int, session: SessionDep, user: CurrentUserDep) -> ItemRead:
    return ItemRead.model_validate(_get_owned_item(session, user.tenant_id, item_id))


@router.patch("/{item_id}")
def update_item(
    item_id: int, body: ItemUpdate, session: SessionDep, user: CurrentUserDep
) -> ItemRead:
    item = _get_owned_item(session, user.tenant_id, item_id)
    for field, value in body.model_dump(exclude_unset=True).items():
        setattr(item, field, value)
    session.commit()
    return ItemRead.model_validate(item)


@router.delete("/{item_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_item(item_id: int, session: SessionDep, user: CurrentUserDep) -> Response:
    session.delete(_get_owned_item(session, user.tenant_id, item_id))
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)

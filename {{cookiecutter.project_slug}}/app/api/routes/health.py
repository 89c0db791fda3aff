"""Liveness probe for load balancers and orchestrators."""

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Answer 200 while the process serves requests; touches nothing else on purpose."""
    return {"status": "ok"}

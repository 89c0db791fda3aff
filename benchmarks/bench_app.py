"""Copied into a generated project as `bench_app.py` and served by uvicorn for the benchmark.

It is the project's own module-level app plus one trivial JSON route. With BENCH_STOCK_SENTRY set
to a sample rate, it first starts the Sentry SDK the way its documentation shows
(`sentry_sdk.init(dsn=...)` with the default integrations), for comparison; the project's own
set-up is off then, because SENTRY_DSN is empty.
"""

import os

if os.environ.get("BENCH_STOCK_SENTRY"):
    import sentry_sdk

    sentry_sdk.init(
        dsn=os.environ["BENCH_STOCK_DSN"],
        traces_sample_rate=float(os.environ["BENCH_STOCK_SENTRY"]) or None,
    )

from app.main import app


@app.get("/bench/ping")
async def ping() -> dict[str, str]:
    return {"pong": "ok"}

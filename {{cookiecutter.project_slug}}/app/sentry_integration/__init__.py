"""Everything Sentry-only behind `app/sentry.py`, one module per thing a maintainer changes.

- `request`: the request path, an ASGI middleware (scope per request, traces, failed requests).
- `events`: which events are sent and what they carry (the SDK's hooks, log handlers).
- `frames`: source lines and local variables of the service's own stack frames.
- `flood`: at most N events per issue per window.
- `privacy`: the scrubber every event, transaction and breadcrumb goes through.
- `delivery`: the HTTP transport to Sentry (TLS, proxies, rate limits, client reports).
- `spool`: the disk spool that keeps error events while Sentry cannot be reached.
- `check`: the test event of `python -m app.sentry check`.

Only sentry-sdk's documented public API is used here (docs/adr/0003-error-tracking-with-sentry.md).
"""

"""Everything Sentry-only behind `app/sentry.py`, one module per thing a maintainer changes.

- `request`: the request path, an ASGI middleware (scope per request, traces, failed requests).
- `events`: what an event carries and which events are sent (client errors, frames, floods).
- `privacy`: the scrubber every event, transaction and breadcrumb goes through.
- `delivery`: the HTTP transport to Sentry (TLS, proxies, rate limits, client reports).
- `spool`: the disk spool that keeps error events while Sentry cannot be reached.
- `check`: the test event of `python -m app.sentry check`.

Only sentry-sdk's documented public API is used here (docs/adr/0003-error-tracking-with-sentry.md).
"""

"""What must never leave the process in an error report, and the scrubber that enforces it.

Everything Sentry would send (errors with their breadcrumbs, transactions) passes through
`scrub_event` first. Two rules, applied at any depth:

1. A value whose key *contains* one of `SENSITIVE_KEY_PARTS` is replaced with `FILTERED`. This
   covers headers (`Authorization`, `X-Api-Key`), cookies, query parameters, JSON and form fields
   (`stripe_secret_key`, `refresh_token`), stack-frame local variables, `extra`, contexts, tags and
   breadcrumb data. Lists of `[name, value]` pairs (raw ASGI headers, parsed query strings) count as
   keys and values too.
2. Any string, whatever its key, has credential-looking parts replaced: bearer tokens, JWTs,
   passwords in URLs, sensitive query parameters inside URLs, well-known API key formats, and email
   addresses. The only email kept is the user's, which the app sets on purpose.

To protect another field, add a word to `SENSITIVE_KEY_PARTS`; to recognise another credential
format, add a pattern to `CREDENTIAL_PATTERNS`. This module is the single place for both.
"""

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

FILTERED = "[Filtered]"

#: A key containing any of these (case-insensitive) has its value replaced.
SENSITIVE_KEY_PARTS: tuple[str, ...] = (
    "api_key",
    "apikey",
    "api-key",
    "auth",
    "bearer",
    "card_number",
    "cardnumber",
    "cookie",
    "credential",
    "csrf",
    "cvc",
    "cvv",
    "dsn",
    "forwarded",
    "ip_address",
    "jwt",
    "key",
    "passphrase",
    "passwd",
    "password",
    "private",
    "pwd",
    "real-ip",
    "real_ip",
    "remote_addr",
    "secret",
    "session",
    "signature",
    "token",
    "xsrf",
)
#: Keys that are sensitive only as a whole word: `client` is the client's address in an ASGI scope
#: (a request object held in a local variable), `ip` an address anywhere, `sid` and the cookie
#: names of common frameworks a session id.
SENSITIVE_KEYS = frozenset(
    {"client", "ip", "client_ip", "remote_ip", "x-client-ip", "sid", "connect.sid", "phpsessid"}
)

#: A key (in a query string, an assignment, a repr) that contains a sensitive word.
_KEY_CHAR = r"[^\s=:&#?;,\"'()\[\]{}<>]"
_KEY = _KEY_CHAR + "*(?:" + "|".join(map(re.escape, SENSITIVE_KEY_PARTS)) + ")" + _KEY_CHAR + "*"


#: Authorization schemes whose credential follows a space (`Authorization: Token abc`).
_SCHEMES = r"(?:token|bearer|basic|digest|apikey|api-key|ssws|hmac|negotiate|ntlm|sharedkey)\s+"


def _assignment(operator: str) -> re.Pattern[str]:
    """`key<operator>value` where the key contains a sensitive word: a quoted value up to its
    closing quote (spaces included), else the next word, with a scheme word before it if any."""
    return re.compile(
        r"(?i)((?:^|[?&;\s,(\[{\"'])" + _KEY + r"[\"']?\s*" + operator + r"\s*[\"']?)"
        r"(?!\[Filtered\])(?:(?<=\")[^\"\n]+|(?<=')[^'\n]+|(?:" + _SCHEMES + r")?[^\s\"',;)\]}&#]+)"
    )


#: (needle, pattern, replacement): the pattern runs on strings whose lower-cased text contains the
#: needle, which keeps scrubbing linear on long strings that cannot match.
CREDENTIAL_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # Authorization header values, also inside log messages and exception texts.
    ("bearer", re.compile(r"(?i)\b(bearer\s+)[a-z0-9\-._~+/]+=*"), r"\1" + FILTERED),
    ("basic", re.compile(r"\b(Basic\s+)[A-Za-z0-9+/]{8,}={0,2}"), r"\1" + FILTERED),
    # JWTs, whole or cut short by truncation: a base64url JSON header, then optional parts.
    ("eyj", re.compile(r"\beyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*){0,2}"), FILTERED),
    # user:password@ in any URL.
    (
        "://",
        re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@"),
        r"\1" + FILTERED + "@",
    ),
    # ?token=... inside URLs and query strings, and password=..., "api_key": "..." in any text.
    ("=", _assignment("="), r"\1" + FILTERED),
    (":", _assignment(":"), r"\1" + FILTERED),
    # Well-known API key formats: Stripe, GitHub, Slack, AWS access key ids, Google API keys.
    ("_", re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{8,}"), FILTERED),
    ("gh", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), FILTERED),
    ("xox", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"), FILTERED),
    ("akia", re.compile(r"\bAKIA[0-9A-Z]{16}\b"), FILTERED),
    ("aiza", re.compile(r"\bAIza[0-9A-Za-z_-]{35}"), FILTERED),
    # Email addresses (the user's own is kept by `scrub_event`) and IPv4 addresses, except a URL's
    # host (the server's own address, as in `request.url`).
    ("@", re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"), FILTERED),
    (
        ".",
        re.compile(
            r"(?<!://)\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"
        ),
        FILTERED,
    ),
)

#: Nesting deeper than this is replaced rather than walked (the SDK itself stops at 10 levels).
MAX_DEPTH = 32


_SENSITIVE_PART = re.compile("|".join(map(re.escape, SENSITIVE_KEY_PARTS)))
#: Keys up to this length have their verdict cached: the same few hundred names (frame fields,
#: header names, setting names) come back in every event.
_CACHED_KEY_LENGTH = 64
#: Strings up to this length have their scrubbed form cached: most strings of an event (SQL
#: statements, span operations, route names, thread names) recur in every event of their kind.
#: At most `_CACHED_TEXTS` of them are kept, so the cache stays under about 2 MB.
_CACHED_TEXT_LENGTH = 1024
_CACHED_TEXTS = 1024


@lru_cache(maxsize=4096)
def _is_sensitive_name(lowered: str) -> bool:
    return lowered in SENSITIVE_KEYS or _SENSITIVE_PART.search(lowered) is not None


def is_sensitive_key(key: object) -> bool:
    """Whether values under `key` must not be sent (`key` may be a str, bytes or a bytes repr)."""
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    if not isinstance(key, str):
        return False
    lowered = key.lower()
    if len(lowered) <= _CACHED_KEY_LENGTH:
        return _is_sensitive_name(lowered)
    return _is_sensitive_name.__wrapped__(lowered)


def scrub_text(text: str) -> str:
    """`text` with every credential-looking part replaced."""
    if len(text) <= _CACHED_TEXT_LENGTH:
        return _scrub_recurring_text(text)
    return _scrub_text(text)


def _scrub_text(text: str) -> str:
    lowered = text.lower()
    for needle, pattern, replacement in CREDENTIAL_PATTERNS:
        if needle in lowered:
            text = pattern.sub(replacement, text)
    return text


_scrub_recurring_text = lru_cache(maxsize=_CACHED_TEXTS)(_scrub_text)


def _pair_name(item: object) -> object | None:
    """The name of a `[name, value]` pair, or None if `item` is not one."""
    if isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str | bytes):
        return item[0]
    return None


def scrub(value: Any, depth: int = 0) -> Any:
    """A copy of `value` with sensitive keys' values and credential-looking strings replaced.

    Never raises on JSON-like input (dicts, lists, tuples, strings, numbers, None, bytes); anything
    else is returned as it is, for the SDK's serializer to turn into a (scrubbed) string later.
    """
    if depth > MAX_DEPTH:
        return FILTERED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {
            key: FILTERED if is_sensitive_key(key) else scrub(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        result = []
        for item in value:
            name = _pair_name(item)
            if name is not None and is_sensitive_key(name):
                result.append([scrub(name, depth + 1), FILTERED])
            else:
                result.append(scrub(item, depth + 1))
        return result
    if isinstance(value, bytes):
        return scrub_text(value.decode("utf-8", "replace"))
    return value


def scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """Scrub a whole error or transaction event, keeping only the user's id and email.

    A log record's arguments (`logentry.params`) are dropped when the formatted message is there:
    their meaning (`password=%s`) is in the template, not in their own keys, and the formatted,
    scrubbed message says the same. The trace's dynamic sampling context is kept as it is (but for
    its transaction name): it becomes the envelope's `trace` header, and Sentry needs its
    `public_key`, the DSN's public part, which every request to Sentry carries anyway.
    """
    if event.get("type") == "transaction":
        return _scrub_transaction(event)
    return _scrub_event(event)


def _scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    user = event.get("user")
    logentry = event.get("logentry")
    if isinstance(logentry, Mapping) and logentry.get("formatted") is not None:
        event = {**event, "logentry": {k: v for k, v in logentry.items() if k != "params"}}
    contexts = event.get("contexts")
    sampling = None
    if isinstance(contexts, Mapping) and isinstance(contexts.get("trace"), Mapping):
        sampling = contexts["trace"].get("dynamic_sampling_context")
    scrubbed: dict[str, Any] = scrub({key: value for key, value in event.items() if key != "user"})
    if isinstance(user, Mapping):
        kept = {key: user[key] for key in ("id", "email", "username") if key in user}
        if kept:
            scrubbed["user"] = kept
    if isinstance(sampling, Mapping):
        name = sampling.get("transaction")
        scrubbed["contexts"]["trace"]["dynamic_sampling_context"] = (
            {**sampling, "transaction": scrub_text(name)} if isinstance(name, str) else sampling
        )
    return scrubbed


#: What a transaction holds that the SDK fills from its own state (ids, times, its own name and
#: version, the runtime, the settings' release and environment): nothing a request, a query or a
#: user can put there, so it is copied rather than walked. A sampled request pays for the walk.
_SDK_FIELDS = frozenset(
    {
        "type",
        "event_id",
        "timestamp",
        "start_timestamp",
        "platform",
        "sdk",
        "transaction_info",
        "measurements",
        "release",
        "environment",
        "dist",
        "server_name",
    }
)
_SDK_CONTEXTS = frozenset({"runtime"})
#: The trace context's fields, but its data and description, are ids and names the SDK sets.
_SDK_TRACE_FIELDS = frozenset(
    {"trace_id", "span_id", "parent_span_id", "op", "origin", "status", "dynamic_sampling_context"}
)
_SDK_SPAN_FIELDS = frozenset(
    {
        "trace_id",
        "span_id",
        "parent_span_id",
        "same_process_as_parent",
        "op",
        "start_timestamp",
        "timestamp",
        "origin",
        "status",
    }
)


def _scrub_transaction(event: dict[str, Any]) -> dict[str, Any]:
    rest = {key: value for key, value in event.items() if key not in _SDK_FIELDS}
    spans = rest.pop("spans", None)
    contexts = rest.get("contexts")
    trace = contexts.get("trace") if isinstance(contexts, Mapping) else None
    if isinstance(contexts, Mapping):
        rest["contexts"] = {k: v for k, v in contexts.items() if k not in _SDK_CONTEXTS}
        if isinstance(trace, Mapping):
            rest["contexts"]["trace"] = {
                k: v for k, v in trace.items() if k not in _SDK_TRACE_FIELDS
            }
    scrubbed = _scrub_event(rest)
    scrubbed.update((key, event[key]) for key in _SDK_FIELDS if key in event)
    if isinstance(contexts, Mapping):
        scrubbed["contexts"].update((k, contexts[k]) for k in _SDK_CONTEXTS if k in contexts)
        if isinstance(trace, Mapping):
            scrubbed["contexts"]["trace"].update(
                (k, trace[k]) for k in _SDK_TRACE_FIELDS if k in trace
            )
    if isinstance(spans, list):
        scrubbed["spans"] = [_scrub_span(span) for span in spans]
    elif spans is not None:
        scrubbed["spans"] = scrub(spans)
    return scrubbed


def _scrub_span(span: Any) -> Any:
    if not isinstance(span, Mapping):
        return scrub(span)
    scrubbed: dict[str, Any] = scrub({k: v for k, v in span.items() if k not in _SDK_SPAN_FIELDS})
    scrubbed.update((key, span[key]) for key in _SDK_SPAN_FIELDS if key in span)
    return scrubbed


#: What of an error event survives when preparing it failed (see `reduced_event`).
_REDUCED_FIELDS = ("event_id", "timestamp", "level", "platform", "release", "environment")
_REDUCED_FRAME_FIELDS = ("filename", "abs_path", "module", "function", "lineno", "in_app")


def reduced_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The least of an error event that is still worth sending, and safe to send unchecked.

    Used when preparing the full event failed: the exception's type and scrubbed message, and its
    stack (file, function, line) without local variables, source, request, user or any context.
    """
    reduced: dict[str, Any] = {
        key: event[key] for key in _REDUCED_FIELDS if isinstance(event.get(key), str | int | float)
    }
    values = []
    exception = event.get("exception")
    for value in (exception.get("values") or []) if isinstance(exception, Mapping) else []:
        if not isinstance(value, Mapping):
            continue
        frames = (value.get("stacktrace") or {}).get("frames") or []
        values.append(
            {
                "type": str(value.get("type")),
                "value": scrub_text(str(value.get("value", ""))),
                "stacktrace": {
                    "frames": [
                        {key: frame[key] for key in _REDUCED_FRAME_FIELDS if key in frame}
                        for frame in frames
                        if isinstance(frame, Mapping)
                    ]
                },
            }
        )
    if values:
        reduced["exception"] = {"values": values}
    logentry = event.get("logentry")
    message = logentry.get("formatted") if isinstance(logentry, Mapping) else None
    if message is None:
        message = event.get("message")
    if message is not None:
        reduced["message"] = scrub_text(str(message))
    reduced["tags"] = {"reduced_event": "true"}
    return reduced

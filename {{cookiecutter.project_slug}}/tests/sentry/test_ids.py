"""Ids for traces, spans and events: cheap, well formed, unique, and only the SDK's."""

import os
import re
import uuid

import pytest
import sentry_sdk

from app import sentry_ids

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_the_sdk_makes_its_ids_with_the_stand_in() -> None:
    installed = sentry_ids.install()
    assert installed == list(sentry_ids.SDK_MODULES), f"the SDK no longer uses uuid: {installed}"
    assert sentry_ids.install() == installed, "installing twice must change nothing"
    assert uuid.uuid4 is not sentry_ids.FAST_UUID.uuid4, "the app's own uuid4 must stay untouched"


def test_ids_are_well_formed_version_4_and_unique() -> None:
    ids = {sentry_ids.FAST_UUID.uuid4() for _ in range(20_000)}
    assert len(ids) == 20_000, "an id came out twice"
    for made in list(ids)[:100]:
        assert made.version == 4 and HEX32.fullmatch(made.hex), made


def test_traces_made_by_the_sdk_have_fresh_ids() -> None:
    sentry_ids.install()
    with sentry_sdk.start_transaction(name="one") as first, sentry_sdk.start_span() as span:
        pass
    with sentry_sdk.start_transaction(name="two") as second:
        pass
    assert HEX32.fullmatch(first.trace_id) and len(span.span_id) == 16, (first, span)
    assert first.trace_id != second.trace_id


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_workers_do_not_repeat_each_other() -> None:
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(writer, sentry_ids.FAST_UUID.uuid4().hex.encode())
        os._exit(0)
    os.close(writer)
    theirs = os.read(reader, 64).decode()
    os.waitpid(child, 0)
    os.close(reader)
    assert theirs and theirs != sentry_ids.FAST_UUID.uuid4().hex

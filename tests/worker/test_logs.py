"""Logs: one line per event and per API call, with their ids, and never a secret."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from source_kit import SourceKit
from stack import SECRET, signed_headers

from worker.logs import TextFormatter, setup_logging


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged, as the JSON lines production writes."""
    stream = io.StringIO()
    setup_logging("INFO", "json")
    root = logging.getLogger()
    handler = root.handlers[0]
    handler.setStream(stream)  # type: ignore[attr-defined]
    yield stream
    root.handlers.clear()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_events_and_api_calls_log_their_ids_and_no_secret(
    source_kit: Any, captured: io.StringIO
) -> None:
    kit: SourceKit = source_kit(
        {"website": {"kind": "generic", "secret": SECRET, "channel": "main"}}
    )
    event = {
        "id": "evt-9",
        "type": "contact.upsert",
        "match": {"email": "z@example.com"},
        "fields": {"firstName": "Zed"},
    }
    body = json.dumps(event).encode()
    assert kit.post("website", body, signed_headers(body)).status_code == 202
    assert kit.post("website", body, {"Content-Type": "application/json"}).status_code == 401
    kit.apply_all()

    logged = lines(captured)
    accepted = [e for e in logged if "evt-9 accepted" in e["msg"]]
    assert accepted and accepted[0]["source"] == "website" and "event_id" in accepted[0]
    assert any(e["msg"].startswith("refused 401") and e["source"] == "website" for e in logged)
    calls = [e for e in logged if e["msg"].startswith("contacts_api ")]
    assert len(calls) == 2  # the lookup and the create
    assert all({"command_id", "event_id", "channel"} <= set(e) for e in calls)

    text = captured.getvalue()
    token = kit.sandbox.token("main")
    for secret in (SECRET, SECRET.removeprefix("whsec_"), token):
        assert secret not in text


def test_the_text_format_prints_each_records_own_second() -> None:
    """The time is made once a second and kept: records of the next second get the next."""
    formatter = TextFormatter()

    def stamped(created: float) -> str:
        return formatter.format(_record(created)).split()[0]

    base = 1_700_000_000.0
    expected = [time.strftime("%H:%M:%S", time.localtime(base + s)) for s in (0, 0.5, 1, 3, 2)]
    assert [stamped(base + s) for s in (0, 0.5, 1, 3, 2)] == expected
    assert len(set(expected)) == 4
    default = logging.Formatter()  # no date format: milliseconds, not cached by ours
    assert TextFormatter.formatTime(formatter, _record(base + 0.25), None) == default.formatTime(
        _record(base + 0.25)
    )


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created, record.msecs = created, (created % 1) * 1000
    return record

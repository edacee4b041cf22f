"""``contactsync web`` as an operator runs it, on Redis and PostgreSQL: gunicorn in its own
worker class, signed events over kept-alive connections recorded by the group intake, its
own log lines written, and a clean stop."""

from __future__ import annotations

import json
import signal
import threading

import pytest
import requests
from stack import Stack, free_port, signed_headers, wait_for

pytestmark = pytest.mark.integration

EVENTS_PER_SENDER = 25
SENDERS = 4


def test_web_records_what_it_accepts_and_writes_its_own_log_lines(redis_stack: Stack) -> None:
    port = free_port()
    web = redis_stack.start("web", "--port", str(port), "--workers", "2", "--threads", "4")
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{base}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(up, timeout=60)
    statuses: list[int] = []

    def send(sender: int) -> None:
        with requests.Session() as session:  # one kept-alive connection per sender
            for n in range(EVENTS_PER_SENDER):
                event = {
                    "id": f"web-{sender}-{n}",
                    "type": "contact.upsert",
                    "match": {"email": f"sender{sender}@example.com"},
                    "fields": {"firstName": f"N{n}"},
                }
                body = json.dumps(event).encode()
                answer = session.post(
                    f"{base}/webhooks/website", data=body, headers=signed_headers(body), timeout=10
                )
                statuses.append(answer.status_code)

    senders = [threading.Thread(target=send, args=(s,)) for s in range(SENDERS)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)
    assert statuses == [202] * (SENDERS * EVENTS_PER_SENDER)
    assert redis_stack.states()["pending"] == SENDERS * EVENTS_PER_SENDER  # no worker runs

    web.send_signal(signal.SIGTERM)
    assert web.wait(30) == 0
    del redis_stack.processes["web"]
    log = redis_stack.log("web")
    for line in ("Starting gunicorn", "LingeringThreadWorker", "Booting worker", "Shutting down"):
        assert line in log, f"{line!r} not in the log:\n{log[-3000:]}"
    assert "Logging error" not in log, log[-3000:]
    assert "accepted, commands" in log  # the receiver's own line per event

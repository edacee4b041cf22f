"""``contactsync up`` as an operator runs it: Ctrl-C under load loses nothing that was
accepted, a second ``up`` on the same data folder finishes the backlog, and a bad config
is refused naming its key. Real processes (gunicorn, a Celery worker, beat) on the
embedded broker and SQLite, with the in-process sandbox as the Contacts API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests
import yaml
from stack import ROOT, free_port, signed_headers, wait_for, write_config

from worker.contacts_api.sandbox import SandboxServer

RATE = (6000, 60.0)
"""Well above what the test sends, so that the limiter does not set the pace."""
MIN_ACCEPTED = 150
"""Events accepted before Ctrl-C, so that there is a backlog to keep."""


def up_env() -> dict[str, str]:
    """This environment without any ``CONTACTSYNC_*`` setting: ``up`` on its defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_up(config: Path, data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``contactsync --config C --data-dir D up --port P``, output to ``log``."""
    argv = [sys.executable, "-m", "webhooks.cli", "--config", str(config)]
    argv += ["--data-dir", str(data), "up", "--port", str(port)]
    with log.open("ab") as out:
        return subprocess.Popen(argv, env=up_env(), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
    except requests.RequestException:
        return False


def wait_healthy(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    def ready() -> bool:
        assert process.poll() is None, f"up exited {process.returncode}:\n{log.read_text()}"
        return healthy(port)

    wait_for(ready, timeout=30)


def stop(process: subprocess.Popen[bytes], sig: int, log: Path, timeout: float = 60) -> int:
    """Send ``sig`` to ``up`` and wait for it to exit; returns its exit code."""
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"up did not stop within {timeout} s:\n{log.read_text()}") from None


class Sender(threading.Thread):
    """Sends distinct signed upserts over HTTP as fast as it can; remembers the 202s."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/webhooks/website"
        self.accepted: list[int] = []
        self.refused: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._send()
        except BaseException as error:  # reported by the test, not as a thread warning
            self.error = error

    def _send(self) -> None:
        deadline = time.monotonic() + 60
        with requests.Session() as session:
            number = 0
            while time.monotonic() < deadline:
                body = json.dumps(event(number)).encode()
                try:
                    response = session.post(
                        self.url, data=body, headers=signed_headers(body), timeout=10
                    )
                except requests.ConnectionError:
                    # The receiver is gone: what was not answered 202 was not accepted.
                    if self.stopping.is_set():
                        return
                    raise
                if response.status_code == 202:
                    self.accepted.append(number)
                else:
                    self.refused[str(response.status_code)] += 1
                number += 1


def event(number: int) -> dict[str, Any]:
    return {
        "id": f"evt-{number}",
        "type": "contact.upsert",
        "match": {"email": f"u{number}@example.com"},
        "fields": {"firstName": f"U{number}", "lastName": "Up"},
        "tags": ["up"],
    }


def test_ctrl_c_of_up_under_load_loses_nothing_accepted(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    sandbox.state.set_rate(*RATE)
    sandbox.state.set_faults(latency_ms=20)  # a backlog builds up behind the worker
    config = write_config(tmp_path / "c.yaml", sandbox, rate=RATE)
    data, log = tmp_path / "data", tmp_path / "up.log"

    port = free_port()
    first = start_up(config, data, port, log)
    try:
        wait_healthy(first, port, log)
        sender = Sender(port)
        sender.start()
        wait_for(lambda: len(sender.accepted) >= MIN_ACCEPTED or sender.error, timeout=30)
        assert sender.error is None, sender.error
        sender.stopping.set()
        backlog = len(sender.accepted) - len(sandbox.state.contacts("main"))
        assert stop(first, signal.SIGINT, log) == 0, log.read_text()
        sender.join(30)
        assert not sender.is_alive()
        assert sender.error is None, sender.error
    finally:
        if first.poll() is None:
            stop(first, signal.SIGKILL, log)
    assert backlog > 0, "no backlog at Ctrl-C: the test proves nothing"
    accepted = {f"u{n}@example.com": f"U{n}" for n in sender.accepted}
    assert "everything accepted is in the ledger" in log.read_text()

    port = free_port()
    second = start_up(config, data, port, log)
    try:
        wait_healthy(second, port, log)

        def all_there() -> bool:
            found = {c["custom_fields"].get("email"): c for c in sandbox.state.contacts("main")}
            return all(
                email in found
                and found[email]["custom_fields"].get("firstName") == first_name
                and found[email]["tags"] == ["up"]
                for email, first_name in accepted.items()
            )

        wait_for(all_there, timeout=60)
        emails = Counter(c["custom_fields"].get("email") for c in sandbox.state.contacts("main"))
        twice = {email: n for email, n in emails.items() if n > 1}
        assert not twice, twice
        assert stop(second, signal.SIGTERM, log) == 0, log.read_text()
    finally:
        if second.poll() is None:
            stop(second, signal.SIGKILL, log)


def test_up_refuses_a_bad_config_naming_the_key(tmp_path: Path, sandbox: SandboxServer) -> None:
    config = write_config(tmp_path / "c.yaml", sandbox)
    document = yaml.safe_load(config.read_text())
    document["channels"]["main"]["rate_limit"]["calls"] = 0
    config.write_text(yaml.safe_dump(document))
    argv = [sys.executable, "-m", "webhooks.cli", "--config", str(config)]
    argv += ["--data-dir", str(tmp_path / "data"), "up", "--port", str(free_port())]
    done = subprocess.run(
        argv, env=up_env(), cwd=ROOT, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 2, done
    assert b"channels.main.rate_limit.calls" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "ledger.sqlite3").exists()

"""What every scenario shares: the sandbox (in this process, behind a :class:`FaultProxy`),
a config pointing a channel at it with a time-scaled rate limit, the contactsync processes
(``web``, ``worker``, ``beat``) on the scenario's broker and ledger, a sender that behaves
like a webhook vendor, and the final check.

The check, for every event answered 2xx:

- *applied*: its command is ``done`` and its contact, in the sandbox, has the event's field
  values (or those of a later event of the same contact) and its tags;
- *dead*: its command is a dead letter with a reason;
- otherwise *lost*: not in the ledger, still open when the drain timed out, or ``done``
  with the sandbox contact missing or wrong.

And across the sandbox: no two contacts with the same email (*created twice*).
"""

from __future__ import annotations

import heapq
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from sqlalchemy import Engine, select

from ops.chaos.proxy import FaultProxy
from ops.chaos.services import LOOPBACK, free_port
from webhooks.signing import WebhookSecret, sign
from worker.contacts_api.sandbox import DEMO_MAIN_TOKEN, SandboxConfig, SandboxServer
from worker.ledger import connect
from worker.ledger.schema import OPEN_STATES, commands, events

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the scenarios' own source secret
SOURCE = "chaos"
CHANNEL = "main"
READ_TIMEOUT_S = 2.0
"""The workers' read timeout on the Contacts API (the sandbox can be made slower)."""


def elapsed(since: float) -> float:
    """Seconds since ``since`` (a ``time.monotonic()``), rounded for the timeline."""
    return round(time.monotonic() - since, 1)


# -- events --------------------------------------------------------------------------------


def make_events(run: str, count: int) -> list[dict[str, Any]]:
    """``count`` generic events, mostly upserts creating a contact each, some of them
    changing a contact again (a later field value must win) or tagging one (applied after
    its upsert): of every eight, six new contacts, one second upsert, one tag."""
    made: list[dict[str, Any]] = []
    for number in range(count):
        event: dict[str, Any] = {"id": f"{run}-{number}", "type": "contact.upsert"}
        if number % 8 == 3:
            event["match"] = {"email": email(run, number - 2)}
            event["fields"] = {"lastName": f"Again{number}"}
            event["tags"] = ["again"]
        elif number % 8 == 6:
            event["type"] = "contact.tag"
            event["match"] = {"email": email(run, number - 1)}
            event["tags"] = ["tagged"]
        else:
            event["match"] = {"email": email(run, number)}
            event["fields"] = {"firstName": f"F{number}", "lastName": "Chaos"}
            event["tags"] = ["chaos"]
        made.append(event)
    return made


def email(run: str, number: int) -> str:
    """The email of the contact created by event ``number``."""
    return f"c{number}.{run}@example.com"


def signed_headers(body: bytes) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed now with :data:`SECRET`."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(WebhookSecret.parse(SECRET), msg_id, timestamp, body),
    }


class Sender(threading.Thread):
    """Posts the events at a steady rate, as a vendor would: each until it is answered 2xx.

    503 is retried after its ``Retry-After``; a refused or reset connection, a timeout and
    any other 5xx after one second; any other answer is final (a refusal). An event not
    answered 2xx within ``give_up_s`` of its first try is given up."""

    def __init__(
        self, url: str, events: list[dict[str, Any]], per_s: float, give_up_s: float = 240
    ) -> None:
        super().__init__(name="chaos-sender", daemon=True)
        self.url = url
        self.events = events
        self.per_s = per_s
        self.give_up_s = give_up_s
        self.accepted: dict[str, int] = {}
        """Event id -> the 2xx status that accepted it."""
        self.refused: dict[str, int] = {}
        self.given_up: list[str] = []
        self.answers: Counter[str] = Counter()
        """Every answer by status (``conn`` for a connection failure or timeout)."""
        self.missing_retry_after = 0
        self.first_sent: dict[int, float] = {}
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    @property
    def done(self) -> bool:
        """Whether every event has its final answer (or was given up)."""
        return self.finished_at is not None

    def run(self) -> None:
        try:
            self._send()
        except BaseException as error:  # reported by the scenario
            self.error = error
        finally:
            self.finished_at = time.monotonic()

    def _send(self) -> None:
        start = time.monotonic()
        queue: list[tuple[float, int]] = [
            (start + number / self.per_s, number) for number in range(len(self.events))
        ]
        heapq.heapify(queue)
        with requests.Session() as session:
            while queue and not self.stopping.is_set():
                due, number = heapq.heappop(queue)
                wait = due - time.monotonic()
                if wait > 0 and self.stopping.wait(wait):
                    return
                event = self.events[number]
                first = self.first_sent.setdefault(number, time.monotonic())
                retry_in = self._post(session, event)
                if retry_in is None:
                    continue
                if time.monotonic() + retry_in - first > self.give_up_s:
                    self.given_up.append(event["id"])
                    continue
                heapq.heappush(queue, (time.monotonic() + retry_in, number))

    def _post(self, session: requests.Session, event: dict[str, Any]) -> float | None:
        """Post once; returns when to try again, or None when the answer is final."""
        body = json.dumps(event).encode()
        try:
            response = session.post(self.url, data=body, headers=signed_headers(body), timeout=10)
        except requests.RequestException:
            self.answers["conn"] += 1
            return 1.0
        status = response.status_code
        self.answers[str(status)] += 1
        if 200 <= status < 300:
            self.accepted[event["id"]] = status
            return None
        if status == 503:
            header = response.headers.get("Retry-After")
            if header is None or not header.isdigit():
                self.missing_retry_after += 1
                return 1.0
            return float(header)
        if status >= 500:
            return 1.0
        self.refused[event["id"]] = status
        return None


# -- the check ------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What became of the accepted events."""

    applied: int = 0
    dead: Counter[str] = field(default_factory=Counter)
    lost: dict[str, str] = field(default_factory=dict)
    """Event id -> why it counts as lost."""
    open: int = 0
    """Accepted events whose command was still pending, running or scheduled."""
    created_twice: int = 0
    twice: dict[str, int] = field(default_factory=dict)
    """Email -> how many contacts have it (only those with more than one)."""


def check(
    engine: Engine, sandbox_contacts: list[dict[str, Any]], accepted: set[str]
) -> tuple[Verdict, list[dict[str, Any]]]:
    """Judge every accepted event against the ledger and the sandbox; returns the verdict
    and the ledger rows (for evidence)."""
    with engine.connect() as connection:
        rows = [
            dict(row)
            for row in connection.execute(
                select(
                    events.c.key,
                    commands.c.id,
                    commands.c.seq,
                    commands.c.contact_key,
                    commands.c.kind,
                    commands.c.state,
                    commands.c.reason,
                    commands.c.attempts,
                    commands.c.payload,
                    commands.c.contact_id,
                    commands.c.match_value,
                    commands.c.last_error,
                )
                .join(commands, commands.c.event_id == events.c.id)
                .where(events.c.source == SOURCE)
            ).mappings()
        ]
    verdict = Verdict()
    by_email: dict[str, list[dict[str, Any]]] = {}
    for stored in sandbox_contacts:
        by_email.setdefault(str(stored["custom_fields"].get("email")), []).append(stored)
    by_id = {str(stored["id"]): stored for stored in sandbox_contacts}
    verdict.twice = {e: len(found) for e, found in by_email.items() if len(found) > 1}
    verdict.created_twice = sum(n - 1 for n in verdict.twice.values())

    by_key = {row["key"]: row for row in rows}
    per_contact: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        per_contact.setdefault(row["contact_key"], []).append(row)
    for group in per_contact.values():
        group.sort(key=lambda row: row["seq"])

    for key in sorted(accepted):
        record = by_key.get(key)
        if record is None:
            verdict.lost[key] = "answered 2xx but not in the ledger"
            continue
        state = record["state"]
        if state == "dead":
            verdict.dead[record["reason"] or "(no reason)"] += 1
            if not record["reason"]:
                verdict.lost[key] = "dead letter without a reason"
            continue
        if state in OPEN_STATES:
            verdict.open += 1
            verdict.lost[key] = f"still {state} (attempts {record['attempts']})"
            continue
        contact: dict[str, Any] | None = None
        if record["contact_id"]:
            contact = by_id.get(str(record["contact_id"]))
        if contact is None:
            found = by_email.get(str(record["match_value"]), [])
            contact = found[0] if found else None
        if contact is None:
            verdict.lost[key] = f"done, but no contact {record['match_value']} in the sandbox"
            continue
        wrong = _mismatch(record, contact, per_contact[record["contact_key"]])
        if wrong:
            verdict.lost[key] = f"done, but the contact is wrong: {wrong}"
            continue
        verdict.applied += 1
    return verdict, rows


def _mismatch(row: dict[str, Any], contact: dict[str, Any], group: list[dict[str, Any]]) -> str:
    """What the contact lacks of a done command, given its contact's other commands."""
    have = contact["custom_fields"]
    if have.get("email") != row["match_value"]:
        return f"email {have.get('email')!r}"
    payload = row["payload"] or {}
    for name in payload.get("fields", {}):
        setters = [c for c in group if name in (c["payload"] or {}).get("fields", {})]
        done = [c for c in setters if c["state"] == "done"]
        last = done[-1]
        allowed = {last["payload"]["fields"][name]}
        # A later dead letter may have been applied in part before it failed.
        allowed |= {
            c["payload"]["fields"][name]
            for c in setters
            if c["state"] == "dead" and c["seq"] > last["seq"]
        }
        if have.get(name) not in allowed:
            return f"{name}={have.get(name)!r}, expected one of {sorted(map(str, allowed))}"
    missing = sorted(set(payload.get("tags", [])) - set(contact["tags"]))
    if missing:
        return f"tags {missing} missing from {contact['tags']}"
    return ""


# -- the rig --------------------------------------------------------------------------------


def write_config(
    path: Path,
    api_url: str,
    rate: tuple[int, float],
    *,
    retry: dict[str, Any] | None = None,
) -> Path:
    """The config: one channel on the sandbox at ``rate``, the chaos source, the test
    suite's short lease (3 s), reconciling (0.5 s) and republishing (2 s)."""
    document = {
        "contacts_api": {
            "base_url": api_url,
            "connect_timeout_s": 1,
            "read_timeout_s": READ_TIMEOUT_S,
        },
        "channels": {
            CHANNEL: {
                "token": DEMO_MAIN_TOKEN,
                "platform": "whatsapp",
                "rate_limit": {"calls": rate[0], "period_s": rate[1]},
            }
        },
        "sources": {SOURCE: {"kind": "generic", "secret": SECRET, "channel": CHANNEL}},
        "retry": retry or {"base_s": 0.2, "cap_s": 1.0},
        "worker": {"lease_s": 3, "reconcile_every_s": 0.5, "republish_after_s": 2},
    }
    path.write_text(yaml.safe_dump(document))
    return path


class Rig:
    """The sandbox and proxy, a config, and contactsync processes on one broker + ledger."""

    def __init__(
        self,
        folder: Path,
        *,
        broker_url: str | None,
        database_url: str | None,
        rate: tuple[int, float],
        latency_ms: float = 20,
        seed: int = 8,
    ) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.random = random.Random(seed)
        self.rate = rate
        self.sandbox = SandboxServer(SandboxConfig.demo(rate_limit=rate, seed=seed)).start()
        self.sandbox.state.set_faults(latency_ms=latency_ms)
        self.latency_ms = latency_ms
        self.proxy = FaultProxy(self.sandbox.port)
        self.config = write_config(folder / "contactsync.yaml", f"{self.proxy.url}/api/v1", rate)
        self.data = folder / "data"
        self.database_url = database_url
        self.ledger_url = database_url or f"sqlite:///{(self.data / 'ledger.sqlite3').resolve()}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
        self.env.update(
            CONTACTSYNC_CONFIG=str(self.config),
            CONTACTSYNC_DATA_DIR=str(self.data),
            CONTACTSYNC_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each command uses the data folder's
        if broker_url:
            self.env["CONTACTSYNC_BROKER_URL"] = broker_url
        if database_url:
            self.env["CONTACTSYNC_DATABASE_URL"] = database_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.retired: list[subprocess.Popen[bytes]] = []
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.timeline: list[str] = []
        self._engine: Engine | None = None
        self._labels: Counter[str] = Counter()

    # -- processes ----------------------------------------------------------------------

    def note(self, message: str) -> None:
        """Add a line to the scenario's timeline (seconds since the rig started)."""
        self.timeline.append(f"t={elapsed(self.started):5.1f}s {message}")

    def start(self, kind: str, *args: str) -> str:
        """Start ``contactsync KIND ARGS``; returns its label (``worker-2``…)."""
        self._labels[kind] += 1
        label = f"{kind}-{self._labels[kind]}"
        with (self.folder / f"{label}.log").open("ab") as log:
            self.processes[label] = subprocess.Popen(
                [sys.executable, "-m", "webhooks.cli", kind, *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        return label

    def start_web(self) -> str:
        """The receiver under gunicorn (one process, four threads)."""
        return self.start("web", "--port", str(self.port), "--workers", "1", "--threads", "4")

    def start_worker(self, concurrency: int = 3) -> str:
        """A Celery worker process."""
        return self.start("worker", "--concurrency", str(concurrency))

    def start_stack(self, workers: int = 2, concurrency: int = 3) -> None:
        """Receiver, workers and beat; returns when the receiver answers and every worker
        said it is ready."""
        labels = [self.start_web(), self.start("beat")]
        labels += [self.start_worker(concurrency) for _ in range(workers)]
        self.wait_ready([label for label in labels if label.startswith("worker")])
        self.note(f"stack up: web, beat, {workers} workers x {concurrency} threads")

    def wait_ready(self, workers: list[str], timeout: float = 90) -> None:
        """Until the receiver answers /healthz and these workers logged ``ready``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            waiting = [w for w in workers if " ready." not in self.log(w)]
            if not waiting and self.healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout} s: {waiting or 'web'}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        """Whether the receiver answers."""
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def check_alive(self) -> None:
        """Fail if a process exited on its own."""
        for label, process in self.processes.items():
            if process.poll() is not None:
                tail = self.log(label)[-3000:]
                raise RuntimeError(f"{label} exited {process.returncode}:\n{tail}")

    def kill(self, label: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to a process and wait for it; returns its exit code."""
        process = self.processes.pop(label)
        process.send_signal(sig)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        self.retired.append(process)
        return int(code)

    def workers(self) -> list[str]:
        """Labels of the running workers."""
        return [label for label in self.processes if label.startswith("worker")]

    def log(self, label: str) -> str:
        """What a process printed."""
        path = self.folder / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, prefix: str) -> str:
        """Everything printed by the processes whose label starts with ``prefix``."""
        return "".join(
            path.read_text(errors="replace") for path in sorted(self.folder.glob(f"{prefix}*.log"))
        )

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL), the proxy and the sandbox."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self._engine is not None:
            self._engine.dispose()
        self.proxy.close()
        self.sandbox.stop()

    # -- the ledger and the check -------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """An engine on the scenario's ledger (for reading)."""
        if self._engine is None:
            self._engine = connect(self.ledger_url, pool_size=2)
        return self._engine

    def open_commands(self) -> int | None:
        """Commands still pending, running or scheduled (None when the ledger is down)."""
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    select(commands.c.id).where(commands.c.state.in_(OPEN_STATES))
                ).all()
            return len(rows)
        except Exception:
            return None

    def running_commands(self) -> int:
        """Commands a worker holds right now."""
        with self.engine.connect() as connection:
            return len(
                connection.execute(select(commands.c.id).where(commands.c.state == "running")).all()
            )

    def drain(self, sender: Sender, timeout: float) -> bool:
        """Wait until the sender is done and no command is open; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sender.done and self.open_commands() == 0:
                return True
            time.sleep(0.25)
        return False

    def contacts(self) -> list[dict[str, Any]]:
        """The sandbox's contacts on the channel."""
        return self.sandbox.state.contacts(CHANNEL)

    def sandbox_log(self) -> dict[str, Any]:
        """The sandbox's own figures for the channel (calls, statuses, refusals)."""
        return dict(self.sandbox.state.log()["channels"][CHANNEL])

    def replay_dead(self, reasons: list[str]) -> int:
        """``contactsync dlq replay --reason R --yes`` for each reason; returns how many
        dead letters there were to replay."""
        before = self.dead_count(reasons)
        replay = [sys.executable, "-m", "webhooks.cli", "dlq", "replay", "--yes"]
        for reason in reasons:
            subprocess.run(
                [*replay, "--reason", reason],
                env=self.env,
                cwd=ROOT,
                capture_output=True,
                timeout=120,
                check=False,
            )
        return before

    def dead_count(self, reasons: list[str]) -> int:
        """Dead letters with one of these reasons."""
        with self.engine.connect() as connection:
            return len(
                connection.execute(
                    select(commands.c.id).where(
                        commands.c.state == "dead", commands.c.reason.in_(reasons)
                    )
                ).all()
            )

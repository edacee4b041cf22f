"""The fault scenarios. Each sends ``size.events`` events over ``size.seconds`` while it
injects its fault (during ingest, and where it matters during the drain that follows),
waits for the backlog to drain, and judges the result with :func:`ops.chaos.rig.check`.

Fault times and durations scale with ``size.seconds``, so the same script runs in seconds
in CI and for minutes under ``make chaos``; a run shorter than :data:`SHORT_S` skips the
second fault of the scenarios that have two.
"""

from __future__ import annotations

import math
import shutil
import signal
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ops.chaos.rig import Rig, Sender, check, make_events
from ops.chaos.services import (
    DedicatedPostgres,
    DedicatedRabbitMQ,
    DedicatedRedis,
    Unavailable,
)

SHORT_S = 20.0
CALLS_PER_EVENT = 2.6
"""API calls an event of :func:`make_events`' mix costs on average (lookup, create, tags)."""
PERIOD_S = 2.0
"""The time-scaled limit's window (the real one is 60 s)."""
TRANSIENT = ["connection_failed", "timeout", "server_error", "worker_lost"]
"""Dead-letter reasons an operator replays once the fault is over (docs/dead-letters.md)."""


@dataclass(frozen=True)
class Size:
    """How much traffic: ``events`` spread evenly over ``seconds``."""

    events: int = 240
    seconds: float = 24.0

    @property
    def per_s(self) -> float:
        """Events a second."""
        return self.events / self.seconds

    @property
    def short(self) -> bool:
        """A CI-sized run: one fault where the long run has two."""
        return self.seconds < SHORT_S

    def scaled(self, share: float, low: float, high: float) -> float:
        """``share`` of the ingest time, kept within ``[low, high]`` seconds."""
        return min(high, max(low, share * self.seconds))


@dataclass
class Result:
    """What a scenario did and found."""

    scenario: str
    fault: str = ""
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    given_up: int = 0
    applied: int = 0
    dead: dict[str, int] = field(default_factory=dict)
    dead_before_replay: dict[str, int] = field(default_factory=dict)
    replayed: int = 0
    created_twice: int = 0
    lost: int = 0
    open: int = 0
    wall_s: float = 0.0
    answers: dict[str, int] = field(default_factory=dict)
    api: dict[str, Any] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    """The API calls the sandbox answered, by request (lookup, create, update, tags)."""
    timeline: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    skipped: str | None = None
    folder: str = ""

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing created twice, nothing else wrong."""
        clean = not (self.problems or self.lost or self.created_twice)
        return self.skipped is None and clean

    def summary(self) -> str:
        """One line of figures."""
        if self.skipped:
            return f"{self.scenario:<18} SKIPPED: {self.skipped}"
        dead = sum(self.dead.values())
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.dead.items()))
        line = (
            f"{self.scenario:<18} sent {self.sent}  2xx {self.accepted}  applied {self.applied}  "
            f"dead {dead}{f' ({reasons})' if reasons else ''}  created twice {self.created_twice}"
            f"  lost {self.lost}{f' ({self.open} still open)' if self.open else ''}"
            f"  wall {self.wall_s:.1f} s  {'OK' if self.ok else 'FAILED'}"
        )
        if self.replayed:
            before = ", ".join(f"{k}: {v}" for k, v in sorted(self.dead_before_replay.items()))
            line += f"\n{'':<18} dead letters before replay: {before}; replayed {self.replayed}"
        return line

    def report(self) -> str:
        """The summary, the timeline, the receiver's answers and any problem, with evidence."""
        lines = [self.summary()]
        if self.skipped:
            return lines[0]
        lines += [f"    {entry}" for entry in self.timeline]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(self.answers.items()))
        lines.append(f"    receiver answers: {answers}")
        api = self.api
        lines.append(
            f"    sandbox: {api.get('accepted', 0)} calls, statuses {api.get('statuses', {})}, "
            f"429s {api.get('refused', {}).get('429', 0)}, "
            f"max {api.get('max_in_window', 0)} in a {api.get('limit', {}).get('period_s')} s "
            f"window (limit {api.get('limit', {}).get('calls')})"
        )
        if self.requests:
            by_request = ", ".join(f"{k} {v}" for k, v in sorted(self.requests.items()))
            lines.append(f"    API calls by request: {by_request}")
        lines += [f"    PROBLEM: {problem}" for problem in self.problems]
        lines += [f"    evidence: {line}" for line in self.evidence[:20]]
        lines.append(f"    logs: {self.folder}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, with ``ok``."""
        return {**asdict(self), "ok": self.ok}


class Pool:
    """Services shared by the scenarios of one run: one dedicated PostgreSQL cluster for
    the ledgers of the scenarios that do not take PostgreSQL down (a database each)."""

    def __init__(self) -> None:
        self._postgres: DedicatedPostgres | None = None

    def database(self, name: str) -> str:
        """A fresh ledger database on the shared dedicated cluster."""
        if self._postgres is None:
            postgres = DedicatedPostgres()
            try:
                postgres.start()
            except BaseException:
                postgres.close()
                raise
            self._postgres = postgres
        return self._postgres.create_database(f"chaos_{name.replace('-', '_')}_{_tag()}")

    def close(self) -> None:
        """Stop the cluster and delete it."""
        if self._postgres is not None:
            self._postgres.close()
            self._postgres = None


def _tag() -> str:
    return uuid.uuid4().hex[:8]


# -- the driver -------------------------------------------------------------------------------


Fault = Callable[[Rig, Sender, Result], None]


def drive(
    result: Result,
    size: Size,
    folder: Path,
    *,
    broker_url: str | None,
    database_url: str | None,
    fault: Fault,
    headroom: float = 2.0,
    replay: bool = False,
    extra_drain_s: float = 0.0,
    start: Callable[[Rig], None] | None = None,
) -> Result:
    """Start a rig, send while ``fault`` runs, drain, (replay what died of a passing
    fault,) and check. ``headroom`` is the rate limit over the calls the traffic needs:
    below 1, a backlog builds up during ingest, so that there is a drain to disturb."""
    started = time.monotonic()
    calls = max(10, math.ceil(size.per_s * CALLS_PER_EVENT * headroom * PERIOD_S))
    rig = Rig(folder, broker_url=broker_url, database_url=database_url, rate=(calls, PERIOD_S))
    result.folder = str(folder)
    run = f"{result.scenario.replace('-', '')}{_tag()[:4]}"
    events = make_events(run, size.events)
    sender = Sender(f"{rig.url}/webhooks/chaos", events, size.per_s)
    try:
        (start or (lambda r: r.start_stack()))(rig)
        rig.note(
            f"sending {size.events} events over {size.seconds:g} s; limit {calls}/{PERIOD_S:g} s"
        )
        sender.start()
        fault(rig, sender, result)
        drain_s = max(60.0, 3 * size.seconds) + extra_drain_s
        drained = rig.drain(sender, drain_s)
        rig.note("drained" if drained else f"NOT drained within {drain_s:g} s")
        if replay:
            dead, _ = check(rig.engine, rig.contacts(), set(sender.accepted))
            result.dead_before_replay = dict(dead.dead)
            result.replayed = rig.replay_dead(TRANSIENT)
            if result.replayed:
                rig.note(f"replayed {result.replayed} dead letters (dlq replay --reason …)")
                drained = rig.drain(sender, drain_s)
                rig.note("drained after replay" if drained else "NOT drained after replay")
        sender.stopping.set()
        sender.join(15)
        verdict, rows = check(rig.engine, rig.contacts(), set(sender.accepted))
        result.sent = len(sender.first_sent)
        result.accepted = len(sender.accepted)
        result.refused = len(sender.refused)
        result.given_up = len(sender.given_up)
        result.applied = verdict.applied
        result.dead = dict(verdict.dead)
        result.created_twice = verdict.created_twice
        result.lost = len(verdict.lost)
        result.open = verdict.open
        result.answers = dict(sender.answers)
        result.api = rig.sandbox_log()
        result.requests = dict(
            Counter(_request_name(c.method, c.path) for c in rig.sandbox.state.calls("main"))
        )
        if sender.error is not None:
            result.problems.append(f"the sender failed: {sender.error!r}")
        if result.refused:
            result.problems.append(f"{result.refused} events refused: {dict(sender.refused)}")
        if result.given_up:
            result.problems.append(f"{result.given_up} events never accepted")
        if sender.missing_retry_after:
            result.problems.append(f"{sender.missing_retry_after} 503s without Retry-After")
        _evidence(result, verdict, rows, rig, set(sender.accepted))
        gone = [label for label, process in rig.processes.items() if process.poll() is not None]
        if gone:
            result.problems.append(f"exited on their own: {', '.join(gone)}")
    except Exception as error:  # a fault that could not be injected or undone, say
        result.problems.append(f"the scenario failed: {type(error).__name__}: {error}")
        result.evidence += traceback.format_exc().splitlines()[-12:]
    finally:
        sender.stopping.set()
        result.timeline = rig.timeline
        rig.stop()
        result.wall_s = round(time.monotonic() - started, 1)
    return result


def _evidence(
    result: Result, verdict: Any, rows: list[dict[str, Any]], rig: Rig, accepted_keys: set[str]
) -> None:
    by_key = {row["key"]: row for row in rows}
    for key, why in list(verdict.lost.items())[:10]:
        row = by_key.get(key, {})
        result.evidence.append(
            f"lost {key}: {why}; command {row.get('id')} state {row.get('state')} "
            f"attempts {row.get('attempts')} last_error {row.get('last_error')!r}"
        )
    dead = [row for row in rows if row["state"] == "dead" and row["key"] in accepted_keys]
    for row in dead[:5]:
        later = sorted(
            (r for r in rows if r["contact_key"] == row["contact_key"] and r["seq"] > row["seq"]),
            key=lambda r: r["seq"],
        )
        order = (
            f"; accepted before its contact's upsert {later[0]['key']} (seq {row['seq']} < "
            f"{later[0]['seq']}): the sender's retries reordered them"
            if row["reason"] == "no_such_contact" and later and later[0]["kind"] == "upsert"
            else ""
        )
        result.evidence.append(
            f"dead {row['key']} ({row['kind']}, command {row['id']}): {row['reason']}, "
            f"attempts {row['attempts']}, last_error {row['last_error']!r}{order}"
        )
    if verdict.twice:
        contacts = rig.contacts()
        for address, count in list(verdict.twice.items())[:5]:
            found = [c for c in contacts if c["custom_fields"].get("email") == address]
            commands = [r for r in rows if r["match_value"] == address]
            result.evidence.append(
                f"{count} contacts with email {address}: "
                + "; ".join(f"id {c['id']} created_at {c['created_at']}" for c in found)
                + " | commands: "
                + "; ".join(
                    f"{r['id']} {r['kind']} {r['state']} attempts {r['attempts']} "
                    f"contact_id {r['contact_id']} last_error {r['last_error']!r}"
                    for r in commands
                )
            )
        posts = Counter(
            call.path
            for call in rig.sandbox.state.calls("main")
            if call.method == "POST" and call.path.endswith("/contact")
        )
        result.evidence.append(f"POST /contact calls answered: {sum(posts.values())}")


def wait(seconds: float, sender: Sender | None = None) -> None:
    """Sleep, unless the sender failed (then return at once)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sender is not None and sender.error is not None:
            return
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def until_ingest_done(sender: Sender, timeout: float = 600) -> None:
    """Until the sender has every event's final answer."""
    deadline = time.monotonic() + timeout
    while not sender.done and time.monotonic() < deadline:
        time.sleep(0.1)


def backlog(rig: Rig) -> int:
    """Open commands right now (0 when the ledger cannot say)."""
    return rig.open_commands() or 0


# -- the scenarios ----------------------------------------------------------------------------


def worker_kill(size: Size, folder: Path, pool: Pool) -> Result:
    """SIGKILL a worker process every few seconds, mid-command, and start a new one."""
    result = Result("worker-kill", fault="SIGKILL of a worker process mid-command, repeatedly")
    redis = DedicatedRedis(folder / "redis")
    redis.start()
    interval = size.scaled(0.12, 1.5, 6.0)

    def fault(rig: Rig, sender: Sender, result: Result) -> None:
        wait(size.seconds * 0.15, sender)
        kills = drain_kills = 0
        while sender.error is None:
            ingest_over = sender.done
            if ingest_over and (backlog(rig) == 0 or drain_kills >= 2):
                break
            victim = rig.random.choice(rig.workers())
            running = rig.running_commands()
            pid = rig.processes[victim].pid
            rig.kill(victim)
            kills += 1
            drain_kills += ingest_over
            rig.note(
                f"SIGKILL {victim} (pid {pid}) with {running} commands running in the ledger"
                f"{' (drain)' if ingest_over else ''}; started {rig.start_worker()}"
            )
            wait(interval * rig.random.uniform(0.7, 1.3), sender)
        if kills < 2:
            result.problems.append(f"only {kills} kills: the run was too short to test anything")

    try:
        return drive(
            result,
            size,
            folder,
            broker_url=redis.url,
            database_url=pool.database("worker_kill"),
            fault=fault,
        )
    finally:
        redis.close()


def _broker_restart(
    result: Result, size: Size, folder: Path, pool: Pool, broker: DedicatedRedis | DedicatedRabbitMQ
) -> Result:
    down_s = size.scaled(0.08, 1.0, 5.0)

    def restart(rig: Rig, when: str) -> None:
        open_before = backlog(rig)
        broker.kill()
        rig.note(f"SIGKILL {type(broker).__name__[9:]} ({when}, {open_before} commands open)")
        time.sleep(down_s)
        took = broker.restart()
        rig.note(
            f"restarted after {down_s:g} s down (+{took:.1f} s to answer), empty of messages"
            if isinstance(broker, DedicatedRedis)
            else f"restarted after {down_s:g} s down (+{took:.1f} s to boot)"
        )

    def fault(rig: Rig, sender: Sender, result: Result) -> None:
        if not size.short:
            wait(size.seconds * 0.4, sender)
            restart(rig, "during ingest")
        until_ingest_done(sender)
        time.sleep(0.5)
        if backlog(rig) == 0:
            result.problems.append("no backlog when ingest ended: the drain restart tests nothing")
        restart(rig, "during the drain")

    return drive(
        result,
        size,
        folder,
        broker_url=broker.url,
        database_url=pool.database(result.scenario),
        fault=fault,
        headroom=0.6,
    )


def redis_restart(size: Size, folder: Path, pool: Pool) -> Result:
    """Kill -9 the (dedicated, non-persistent) Redis broker during ingest and during the
    drain, and start it again empty."""
    result = Result("redis-restart", fault="Redis broker SIGKILLed and restarted empty")
    redis = DedicatedRedis(folder / "redis")
    try:
        redis.start()
        return _broker_restart(result, size, folder, pool, redis)
    finally:
        redis.close()


def rabbitmq_restart(size: Size, folder: Path, pool: Pool) -> Result:
    """Kill -9 a dedicated RabbitMQ node during ingest and during the drain, and boot it
    again from its Mnesia folder."""
    result = Result("rabbitmq-restart", fault="RabbitMQ node SIGKILLed and restarted")
    try:
        rabbit = DedicatedRabbitMQ(folder / "rabbitmq")
        rabbit.start()
    except Unavailable as error:
        result.skipped = str(error)
        return result
    try:
        return _broker_restart(result, size, folder, pool, rabbit)
    finally:
        rabbit.close()


def postgres_outage(size: Size, folder: Path, pool: Pool) -> Result:
    """Take the ledger's (dedicated) PostgreSQL down during ingest (an immediate shutdown,
    crash recovery on restart) and, in the long run, again during the drain (a fast
    shutdown). The receiver must answer 503 with Retry-After meanwhile."""
    result = Result("postgres-outage", fault="the ledger's PostgreSQL down, then back")
    postgres = DedicatedPostgres()
    redis = DedicatedRedis(folder / "redis")
    down_s = size.scaled(0.3, 4.0, 15.0)

    def fault(rig: Rig, sender: Sender, result: Result) -> None:
        wait(size.seconds * 0.3, sender)
        open_before = backlog_or_na(rig)
        postgres.crash()
        rig.note(f"PostgreSQL immediate shutdown (SIGQUIT), {open_before} open")
        answers = Counter(sender.answers)
        time.sleep(down_s)
        seen = Counter(sender.answers) - answers
        took = postgres.start()
        rig.note(
            f"PostgreSQL back after {down_s:g} s (+{took:.1f} s); answers while down: {dict(seen)}"
        )
        if not seen.get("503"):
            result.problems.append("no 503 while PostgreSQL was down")
        if not size.short:
            until_ingest_done(sender)
            time.sleep(0.5)
            drain_open = backlog(rig)
            postgres.shut_down()
            rig.note(f"PostgreSQL fast shutdown (SIGINT) during the drain, {drain_open} open")
            time.sleep(down_s)
            took = postgres.start()
            rig.note(f"PostgreSQL back after {down_s:g} s (+{took:.1f} s)")

    try:
        postgres.start()
        redis.start()
        drive(
            result,
            size,
            folder,
            broker_url=redis.url,
            database_url=postgres.create_database("chaos_ledger"),
            fault=fault,
            extra_drain_s=2 * down_s,
            headroom=0.6,
        )
        if result.answers.get("500"):
            result.problems.append(f"{result.answers['500']} answers 500 (expected 503)")
        return result
    finally:
        redis.close()
        postgres.close()


def backlog_or_na(rig: Rig) -> str:
    """Open commands, for the timeline."""
    value = rig.open_commands()
    return "?" if value is None else f"{value} commands"


def sandbox_outage(size: Size, folder: Path, pool: Pool) -> Result:
    """The Contacts API unreachable: connections refused, then accepted and never answered
    (a dead load balancer), then back. What died of it meanwhile is replayed."""
    result = Result("sandbox-outage", fault="Contacts API refusing, then hanging, then back")
    redis = DedicatedRedis(folder / "redis")
    down_s = size.scaled(0.67, 4.0, 60.0)

    def fault(rig: Rig, sender: Sender, result: Result) -> None:
        wait(size.seconds * 0.25, sender)
        rig.proxy.set_mode("refuse")
        rig.note(f"API refusing connections for {down_s / 2:g} s")
        wait(down_s / 2)
        rig.proxy.set_mode("hang")
        rig.note(f"API accepting and never answering for {down_s / 2:g} s")
        wait(down_s / 2)
        rig.proxy.set_mode("forward")
        rig.note(f"API back ({backlog_or_na(rig)} open)")

    try:
        redis.start()
        return drive(
            result,
            size,
            folder,
            broker_url=redis.url,
            database_url=pool.database("sandbox_outage"),
            fault=fault,
            replay=True,
            extra_drain_s=down_s,
        )
    finally:
        redis.close()


def sandbox_slow(size: Size, folder: Path, pool: Pool) -> Result:
    """The Contacts API slower than the workers' 2 s read timeout: first a quarter of the
    calls (a tail of 6 s, while the backlog is short), then every call (3 s), then back to
    normal. A request that times out is still applied by the API when its time is up."""
    result = Result("sandbox-slow", fault="Contacts API slower than the client's timeout")
    redis = DedicatedRedis(folder / "redis")
    slow_s = size.scaled(0.25, 3.0, 20.0)

    def fault(rig: Rig, sender: Sender, result: Result) -> None:
        state = rig.sandbox.state
        wait(size.seconds * 0.2, sender)
        state.set_faults(hang_rate=0.25, hang_s=6.0)
        rig.note(f"a quarter of API calls take 6 s (read timeout 2 s) for {slow_s:g} s")
        wait(slow_s)
        state.set_faults(hang_rate=0.0, latency_ms=3000)
        rig.note(f"every API call takes 3 s for {slow_s:g} s")
        wait(slow_s)
        state.set_faults(latency_ms=rig.latency_ms)
        rig.note(f"API back to normal ({backlog_or_na(rig)} open)")

    try:
        redis.start()
        return drive(
            result,
            size,
            folder,
            broker_url=redis.url,
            database_url=pool.database("sandbox_slow"),
            fault=fault,
            replay=True,
            extra_drain_s=2 * slow_s,
        )
    finally:
        redis.close()


def sandbox_errors(size: Size, folder: Path, pool: Pool) -> Result:
    """The Contacts API answering 500, 502 or 503 to 30 % of calls at random."""
    result = Result("sandbox-errors", fault="Contacts API answering 5xx at random")
    redis = DedicatedRedis(folder / "redis")
    bad_s = size.scaled(0.5, 4.0, 60.0)

    def fault(rig: Rig, sender: Sender, result: Result) -> None:
        state = rig.sandbox.state
        wait(size.seconds * 0.2, sender)
        state.set_faults(error_rate=0.3)
        rig.note(f"30 % of API calls answered 5xx for {bad_s:g} s")
        wait(bad_s)
        state.set_faults(error_rate=0.0)
        rig.note(f"API back to normal ({backlog_or_na(rig)} open)")

    try:
        redis.start()
        return drive(
            result,
            size,
            folder,
            broker_url=redis.url,
            database_url=pool.database("sandbox_errors"),
            fault=fault,
        )
    finally:
        redis.close()


def up_sigterm(size: Size, folder: Path, pool: Pool) -> Result:
    """``contactsync up`` (embedded broker, SQLite) stopped with SIGTERM during ingest and
    during the drain, and started again on the same data folder and port."""
    result = Result("up-sigterm", fault="contactsync up stopped with SIGTERM and restarted")

    def start(rig: Rig) -> None:
        rig.start("up", "--port", str(rig.port), "--concurrency", "4")
        rig.wait_ready([], timeout=120)
        rig.note("contactsync up is up")

    def stop_and_restart(rig: Rig, when: str) -> None:
        (label,) = [label for label in rig.processes if label.startswith("up")]
        open_before = backlog(rig)
        stopping = time.monotonic()
        code = rig.kill(label, signal.SIGTERM)
        took = time.monotonic() - stopping
        said = "everything accepted is in the ledger" in rig.log(label)
        rig.note(f"SIGTERM to up ({when}, {open_before} open): exit {code} after {took:.1f} s")
        if code != 0 or not said:
            result.problems.append(f"up stopped with exit {code} on SIGTERM ({when})")
        start(rig)

    def fault(rig: Rig, sender: Sender, result: Result) -> None:
        wait(size.seconds * 0.4, sender)
        stop_and_restart(rig, "during ingest")
        until_ingest_done(sender)
        time.sleep(0.5)
        if not size.short or backlog(rig):
            stop_and_restart(rig, "during the drain")

    return drive(
        result,
        size,
        folder,
        broker_url=None,
        database_url=None,
        fault=fault,
        start=start,
        headroom=0.8,
    )


SCENARIOS: dict[str, Callable[[Size, Path, Pool], Result]] = {
    "worker-kill": worker_kill,
    "redis-restart": redis_restart,
    "rabbitmq-restart": rabbitmq_restart,
    "postgres-outage": postgres_outage,
    "sandbox-outage": sandbox_outage,
    "sandbox-slow": sandbox_slow,
    "sandbox-errors": sandbox_errors,
    "up-sigterm": up_sigterm,
}


def run_scenario(
    name: str, size: Size, folder: Path | None = None, pool: Pool | None = None
) -> Result:
    """Run one scenario in ``folder`` (a new temporary one by default, kept for its logs)."""
    folder = folder or Path(tempfile.mkdtemp(prefix=f"contactsync-chaos-{name}-"))
    own_pool = pool is None
    pool = pool or Pool()
    try:
        return SCENARIOS[name](size, folder, pool)
    except Unavailable as error:
        return Result(name, skipped=str(error), folder=str(folder))
    finally:
        if own_pool:
            pool.close()


def remove(folder: str) -> None:
    """Delete a scenario's folder (its logs)."""
    shutil.rmtree(folder, ignore_errors=True)


def _request_name(method: str, path: str) -> str:
    """Which of the API's requests a call was, by its method and path."""
    if path.endswith("/by_custom_field"):
        return "lookup"
    if path.endswith("/tags"):
        return "add tags" if method == "POST" else "remove tags"
    if path.endswith("/contact"):
        return "create"
    return "update" if method == "PUT" else f"{method} contact"

"""contactsync against the obvious implementation, on the same stream and the same sandbox.

    python -m ops.bench.compare [--events 2000 --contacts 300 --calls 60 --period 6]
                                [--workers 2 --concurrency 4 --seed 1]
                                [--only ours|baseline] [--pace flood|stream] [--json out.json]

One seeded stream (:mod:`ops.bench.stream`) goes through each side in turn, each time on a
freshly reset sandbox channel at the same time-scaled limit:

- **baseline** (:mod:`ops.bench.baseline`): its Flask app in this process (test client),
  ``--workers`` ``celery -A ops.bench.baseline.tasks worker`` processes (Celery's default
  prefork pool, ``--concurrency`` children each) on a Redis database of its own; its task's
  ``rate_limit`` is the channel's limit. Drained when its queue and unacked set are empty and
  the sandbox has seen no call (accepted or refused) for ``--quiet`` seconds.
- **ours**: the receiver in this process (test client on the real app, signed posts),
  ``--workers`` ``contactsync worker`` processes (``--concurrency`` threads each) and one
  ``contactsync beat`` on Redis + a fresh PostgreSQL database. Drained when the ledger has no
  pending, running or scheduled command, or declared stuck when none settles for
  ``--stall`` seconds.

Both brokers live on a private ``redis-server`` started for the run (``--redis URL`` to use
another): test sessions on the shared Redis flush random database numbers.

Events are posted one per request, in stream order. ``--pace flood`` (the default) posts
them as fast as the receiver answers, workers already running: a backlog builds at once,
which is when per-contact order and call economy matter, and the drain can be set against
its physical bound. ``--pace stream`` keeps the stream's own timing (``--stream-rate``
events a second on average, bursts within a second).

The sandbox runs as its own ``contactsync sandbox`` process, as the real API is another
machine: its admission times and the 429s it sends are not disturbed by this process (the
Flask test clients, the polling). Definitions of every column: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from sqlalchemy import text

from ops.bench.common import (
    ROOT,
    SECRET,
    PrivateRedis,
    Processes,
    SandboxProcess,
    every,
    flush_redis,
    load,
    machine,
    say,
    signed_headers,
    throwaway_postgres,
)
from ops.bench.stream import CHANNEL, FIELDS, State, Timed, describe, expected_state, generate
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import DEMO_MAIN_TOKEN
from worker.runtime import Runtime

SOURCE = "bench"


@dataclass
class Result:
    """One side's figures."""

    side: str
    events: int
    calls: int
    """Accepted API calls (admitted by the sandbox, any status)."""
    calls_per_event: float
    refused_429: int
    max_in_window: int
    limit: int
    post_s: float
    """First post → last post answered."""
    drain_s: float | None
    """First post → last accepted call (``None``: did not drain before the timeout)."""
    bound_s: float
    """``(calls - limit) * period / limit``: the least time from the first post to the last
    of the side's own calls (the first ``limit`` go at once, then ``limit`` a period)."""
    contacts_expected: int
    correct: int
    """Contacts whose one sandbox contact has the expected fields and tags."""
    wrong_fields: int
    wrong_tags: int
    missing: int
    duplicates: int
    """Sandbox contacts beyond the first with the same email."""
    unexpected: int
    """Sandbox contacts whose email the stream never upserted."""
    lost: int
    """Events given up on: baseline tasks that exhausted their retries (or failed outright),
    our dead letters."""
    retries: int
    """Baseline task retries; our commands' attempts beyond the first."""
    statuses: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)


# -- judging --------------------------------------------------------------------------------


def judge(
    contacts: Sequence[dict[str, Any]], expected: State, unsettled: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Compare the sandbox's contacts with the model: fields the stream sets, tags as sets.

    ``unsettled``: emails with work still open at the end; a wrong contact among the others
    is wrong although everything sent for it was applied (``wrong_settled``)."""
    by_email: dict[str, list[dict[str, Any]]] = {}
    unexpected = 0
    for contact in contacts:
        address = contact["custom_fields"].get("email")
        if address in expected:
            by_email.setdefault(address, []).append(contact)
        else:
            unexpected += 1
    correct = wrong_fields = wrong_tags = missing = duplicates = wrong_settled = 0
    examples: list[str] = []
    for address, (fields, tags) in expected.items():
        found = by_email.get(address, [])
        duplicates += max(0, len(found) - 1)
        if not found:
            missing += 1
            wrong_settled += address not in unsettled
            if len(examples) < 5:
                examples.append(f"{address}: missing")
            continue
        # With duplicates, judge the oldest (what a lookup would pick), and count it wrong.
        contact = min(found, key=lambda c: (c.get("created_at") or 0, int(c["id"])))
        have = {name: contact["custom_fields"].get(name) for name in fields}
        fields_ok = have == fields
        tags_ok = frozenset(contact["tags"]) == tags
        wrong_fields += not fields_ok
        wrong_tags += not tags_ok
        if fields_ok and tags_ok and len(found) == 1:
            correct += 1
            continue
        wrong_settled += address not in unsettled
        if len(examples) < 5:
            parts = [f"{len(found)} contacts"] if len(found) > 1 else []
            if not fields_ok:
                parts.append(
                    "fields "
                    + ", ".join(
                        f"{k}={have[k]!r} want {v!r}" for k, v in fields.items() if have[k] != v
                    )
                )
            if not tags_ok:
                parts.append(f"tags {sorted(contact['tags'])} want {sorted(tags)}")
            examples.append(f"{address}: " + "; ".join(parts))
    return {
        "correct": correct,
        "wrong_fields": wrong_fields,
        "wrong_tags": wrong_tags,
        "missing": missing,
        "duplicates": duplicates,
        "unexpected": unexpected,
        "wrong_settled": wrong_settled,
        "examples": examples,
    }


def sandbox_quiet_for(sandbox: SandboxProcess) -> Callable[[], float]:
    """Seconds since the sandbox's channel last saw a call, accepted or refused."""
    last = [None, time.monotonic()]

    def quiet() -> float:
        summary = sandbox.log()["channels"][CHANNEL]
        seen = (summary["accepted"], sum(summary["refused"].values()))
        if seen != last[0]:
            last[0], last[1] = seen, time.monotonic()
        return time.monotonic() - float(last[1])

    return quiet


def post_all(
    stream: Sequence[Timed], post: Callable[[dict[str, Any]], Any], pace: str
) -> tuple[float, float]:
    """Post every event in order; returns the monotonic times of the first and last post."""
    started = time.monotonic()
    for timed in stream:
        if pace == "stream":
            delay = started + timed.at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        answer = post(timed.event)
        if answer.status_code != 202:
            raise RuntimeError(f"receiver answered {answer.status_code}: {answer.get_data()!r}")
    return started, time.monotonic()


def wait_ready(logs: Sequence[Path], timeout: float = 60.0) -> None:
    """Until each Celery worker log says ``ready``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(p.exists() and " ready." in p.read_text(errors="replace") for p in logs):
            return
        time.sleep(0.2)
    say(f"  note: not every worker said ready within {timeout:.0f} s; going on")


def finish(
    side: str,
    args: argparse.Namespace,
    sandbox: SandboxProcess,
    expected: State,
    started: float,
    posted: float,
    drained: bool,
    lost: int,
    retries: int,
    detail: dict[str, Any],
    load_before: list[float],
) -> Result:
    """The side's figures from the sandbox's log, calls and contacts."""
    summary = sandbox.log()["channels"][CHANNEL]
    calls = sandbox.calls(CHANNEL)
    times = sorted(call["at"] for call in calls)
    if args.keep:  # the evidence: every accepted call, with its body
        (args.folder / f"{side}-calls.json").write_text(json.dumps(calls))
    unsettled = frozenset(detail.pop("unsettled_contacts", ()))
    verdict = judge(
        sandbox.admin("GET", f"contacts?channel={CHANNEL}")["data"], expected, unsettled
    )
    detail["wrong_with_nothing_open"] = verdict["wrong_settled"]
    detail["contacts_with_open_work"] = len(unsettled)
    return Result(
        side=side,
        events=args.events,
        calls=len(times),
        calls_per_event=len(times) / args.events,
        refused_429=int(summary["refused"].get("429", 0)),
        max_in_window=int(summary["max_in_window"]),
        limit=args.calls,
        post_s=posted - started,
        drain_s=(times[-1] - started) if drained and times else None,
        bound_s=max(0, len(times) - args.calls) * args.period / args.calls,
        contacts_expected=len(expected),
        correct=verdict["correct"],
        wrong_fields=verdict["wrong_fields"],
        wrong_tags=verdict["wrong_tags"],
        missing=verdict["missing"],
        duplicates=verdict["duplicates"],
        unexpected=verdict["unexpected"],
        lost=lost,
        retries=retries,
        statuses=dict(summary["statuses"]),
        detail=detail,
        examples=verdict["examples"],
        load_before=load_before,
        load_after=load(),
    )


# -- the baseline ---------------------------------------------------------------------------


def celery_rate(calls: int, period_s: float) -> str:
    """The channel's limit as a Celery rate string: ``200/m`` for 200 per 60 s, else per s."""
    if period_s == 60:
        return f"{calls}/m"
    if period_s == 1:
        return f"{calls}/s"
    return f"{calls / period_s:g}/s"


def run_baseline(
    stream: Sequence[Timed],
    expected: State,
    args: argparse.Namespace,
    sandbox: SandboxProcess,
    folder: Path,
) -> Result:
    broker = f"{args.redis}/{args.baseline_redis_db}"
    sandbox.reset(latency_ms=args.latency_ms)
    if flush_redis(broker):
        say(f"  note: Redis db {args.baseline_redis_db} was not empty; flushed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTACTSYNC_", "BASELINE_"))}
    env.update(
        BASELINE_BROKER_URL=broker,
        BASELINE_API_URL=sandbox.api_url,
        BASELINE_API_TOKEN=DEMO_MAIN_TOKEN,
        BASELINE_RATE_LIMIT=celery_rate(args.calls, args.period),
        BASELINE_SECRET=SECRET,
        PYTHONUNBUFFERED="1",
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("BASELINE_")})
    # Imported here, after the environment is set: the task reads it at import.
    from ops.bench.baseline.app import create_app
    from ops.bench.baseline.tasks import celery as baseline_celery

    baseline_celery.conf.broker_url = broker
    logs = [folder / f"baseline-worker{n}.log" for n in range(args.workers)]
    processes: list[subprocess.Popen[bytes]] = []
    queue = redis.Redis.from_url(broker)
    say(
        f"baseline: {args.workers} worker(s) x {args.concurrency}, "
        f"rate_limit={env['BASELINE_RATE_LIMIT']} per worker"
    )
    try:
        for number, path in enumerate(logs):
            with path.open("ab") as log:
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "ops.bench.baseline.tasks",
                            "worker",
                            "--loglevel",
                            "INFO",
                            "--concurrency",
                            str(args.concurrency),
                            "--hostname",
                            f"baseline{number}@%h",
                        ],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    )
                )
        wait_ready(logs)
        load_before = load()
        http = create_app(SECRET).test_client()

        def post(event: dict[str, Any]) -> Any:
            body = json.dumps(event).encode()
            return http.post("/events", data=body, headers=signed_headers(body))

        started, posted = post_all(stream, post, args.pace)
        say(f"  baseline: {len(stream)} events posted in {posted - started:.1f} s")
        quiet = sandbox_quiet_for(sandbox)
        progress = every(args.progress_every)
        deadline = started + timeout(args)
        drained = False
        while time.monotonic() < deadline:
            waiting = int(queue.llen("celery")) + int(queue.hlen("unacked"))
            silent = quiet()
            if progress():
                summary = sandbox.log()["channels"][CHANNEL]
                say(
                    f"  baseline {time.monotonic() - started:6.1f} s: queued/unacked {waiting}"
                    f", calls {summary['accepted']}, 429s {summary['refused'].get('429', 0)}"
                    f", max in window {summary['max_in_window']}/{args.calls}"
                )
            if waiting == 0 and silent >= args.quiet:
                drained = True
                break
            if any(p.poll() is not None for p in processes):
                raise RuntimeError(f"a baseline worker exited; logs in {folder}")
            time.sleep(0.5)
        if not drained:
            say(f"  baseline: timed out after {timeout(args):.0f} s")
        still_open = int(queue.llen("celery")) + int(queue.hlen("unacked"))
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        queue.close()
        baseline_celery.close()
    text_of_logs = "\n".join(p.read_text(errors="replace") for p in logs)
    retries = text_of_logs.count("] retry: Retry in ")
    gave_up = text_of_logs.count("] raised unexpected: ")
    succeeded = text_of_logs.count("] succeeded in ")
    failures: dict[str, int] = {}
    for line in text_of_logs.splitlines():
        if "] raised unexpected: " in line:
            reason = line.split("] raised unexpected: ", 1)[1].split("(", 1)[0]
            failures[reason] = failures.get(reason, 0) + 1
    detail = {
        "succeeded": succeeded,
        "failed": failures,
        "rate_limit": env["BASELINE_RATE_LIMIT"],
        "open": still_open,
    }
    return finish(
        "baseline",
        args,
        sandbox,
        expected,
        started,
        posted,
        drained,
        gave_up,
        retries,
        detail,
        load_before,
    )


# -- ours -----------------------------------------------------------------------------------


def write_config(path: Path, api_url: str, args: argparse.Namespace) -> Path:
    """The product config: one channel at the benchmark's limit, everything else default."""
    document = {
        "contacts_api": {"base_url": api_url},
        "channels": {
            CHANNEL: {
                "token": DEMO_MAIN_TOKEN,
                "platform": "whatsapp",
                "rate_limit": {"calls": args.calls, "period_s": args.period},
            }
        },
        "sources": {SOURCE: {"kind": "generic", "secret": SECRET, "channel": CHANNEL}},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def run_ours(
    stream: Sequence[Timed],
    expected: State,
    args: argparse.Namespace,
    sandbox: SandboxProcess,
    folder: Path,
) -> Result:
    from webhooks.app import create_app

    broker = f"{args.redis}/{args.ours_redis_db}"
    sandbox.reset(latency_ms=args.latency_ms)
    if flush_redis(broker):
        say(f"  note: Redis db {args.ours_redis_db} was not empty; flushed")
    with throwaway_postgres("contactsync_compare") as database_url:
        config_path = write_config(folder / "ours.yaml", sandbox.api_url, args)
        data_dir = folder / "ours-data"
        settings = Settings(
            config=config_path, data_dir=data_dir, broker_url=broker, database_url=database_url
        )
        runtime = Runtime(settings, load_config(config_path))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
        env.update(
            CONTACTSYNC_CONFIG=str(config_path),
            CONTACTSYNC_DATA_DIR=str(data_dir),
            CONTACTSYNC_BROKER_URL=broker,
            CONTACTSYNC_DATABASE_URL=database_url,
            CONTACTSYNC_LOG_LEVEL=args.log_level,
            PYTHONUNBUFFERED="1",
        )
        processes = Processes(folder, env)
        say(f"ours: {args.workers} worker(s) x {args.concurrency} threads + beat")
        try:
            http = create_app(runtime).test_client()
            runtime.ledger.counts()  # migrated before the workers start
            for number in range(args.workers):
                processes.start(
                    f"ours-worker{number}", "worker", "--concurrency", str(args.concurrency)
                )
            processes.start("ours-beat", "beat")
            wait_ready([folder / f"ours-worker{n}.log" for n in range(args.workers)])
            load_before = load()

            def post(event: dict[str, Any]) -> Any:
                body = json.dumps(event).encode()
                return http.post(f"/webhooks/{SOURCE}", data=body, headers=signed_headers(body))

            started, posted = post_all(stream, post, args.pace)
            say(f"  ours: {len(stream)} events posted in {posted - started:.1f} s")
            progress = every(args.progress_every)
            deadline = started + timeout(args)
            drained = False
            counts: dict[str, int] = {}
            settled, settled_at = -1, time.monotonic()
            stuck = False
            while True:
                counts = runtime.ledger.counts()
                left = counts["pending"] + counts["running"] + counts["scheduled"]
                if counts["done"] + counts["dead"] != settled:
                    settled, settled_at = counts["done"] + counts["dead"], time.monotonic()
                if progress() or not left:
                    summary = sandbox.log()["channels"][CHANNEL]
                    say(
                        f"  ours {time.monotonic() - started:6.1f} s: "
                        + ", ".join(f"{k} {v}" for k, v in counts.items())
                        + f"; calls {summary['accepted']}"
                        f", 429s {summary['refused'].get('429', 0)}"
                        f", max in window {summary['max_in_window']}/{args.calls}"
                    )
                if not left:
                    drained = True
                    break
                stopped = processes.exited()
                if stopped:
                    raise RuntimeError(f"{', '.join(stopped)} exited; logs in {folder}")
                if time.monotonic() > deadline:
                    say(f"  ours: timed out after {timeout(args):.0f} s with {left} open")
                    break
                if time.monotonic() - settled_at > args.stall:
                    stuck = True
                    say(
                        f"  ours: STUCK - no command settled for {args.stall:.0f} s"
                        f" with {left} open; stopping"
                    )
                    break
                time.sleep(0.5)
            detail = ledger_detail(runtime, counts)
            detail["stuck"] = stuck
            detail["open"] = counts["pending"] + counts["running"] + counts["scheduled"]
        finally:
            processes.stop()
            runtime.ledger.engine.dispose()
            runtime.celery.close()
    return finish(
        "ours",
        args,
        sandbox,
        expected,
        started,
        posted,
        drained,
        counts.get("dead", 0),
        int(detail.get("extra_attempts", 0)),
        detail,
        load_before,
    )


def ledger_detail(runtime: Runtime, counts: dict[str, int]) -> dict[str, Any]:
    """Commands by state and reason, attempts beyond the first, and a few open ones."""
    with runtime.ledger.engine.connect() as connection:
        reasons = connection.execute(
            text(
                "SELECT state, coalesce(reason, ''), count(*) FROM commands"
                " GROUP BY state, coalesce(reason, '') ORDER BY 1, 2"
            )
        ).all()
        attempts = connection.execute(
            text("SELECT coalesce(sum(greatest(attempts - 1, 0)), 0) FROM commands")
        ).scalar()
        open_rows = connection.execute(
            text(
                "SELECT id, kind, contact_key, seq, state, attempts, reason, last_status,"
                " left(coalesce(last_error, ''), 200) FROM commands"
                " WHERE state IN ('pending', 'running', 'scheduled') ORDER BY id LIMIT 10"
            )
        ).all()
        unsettled = connection.execute(
            text(
                "SELECT DISTINCT match_value FROM commands"
                " WHERE state IN ('pending', 'running', 'scheduled')"
                " AND match_field = 'email'"
            )
        ).scalars()
        unsettled_contacts = sorted(str(value) for value in unsettled)
        dead_rows = connection.execute(
            text(
                "SELECT id, kind, contact_key, reason, last_status,"
                " left(coalesce(last_error, ''), 200) FROM commands"
                " WHERE state = 'dead' ORDER BY id LIMIT 10"
            )
        ).all()
    return {
        "states": counts,
        "by_state_reason": [[str(s), str(r), int(n)] for s, r, n in reasons],
        "extra_attempts": int(attempts or 0),
        "open_examples": [[str(x) for x in row] for row in open_rows],
        "dead_examples": [[str(x) for x in row] for row in dead_rows],
        "unsettled_contacts": unsettled_contacts,
    }


# -- report ---------------------------------------------------------------------------------


def timeout(args: argparse.Namespace) -> float:
    """How long a side may take after its first post."""
    if args.timeout:
        return float(args.timeout)
    # Generous: the baseline's Celery workers were seen fetching about one task a second.
    return args.events * 8 * args.period / args.calls + args.events / args.workers + 120


def cells(result: Result) -> dict[str, str]:
    def number(value: float | None, digits: int) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    ratio = result.drain_s / result.bound_s if result.drain_s and result.bound_s else None
    other = {k: v for k, v in result.statuses.items() if k != "200"}
    return {
        "events": str(result.events),
        "API calls (accepted)": str(result.calls),
        "calls / event": number(result.calls_per_event, 2),
        "429s received": str(result.refused_429),
        "max calls in a window / limit": f"{result.max_in_window} / {result.limit}",
        "accepted calls not 200": ", ".join(f"{k}: {v}" for k, v in sorted(other.items())) or "0",
        "posting took, s": number(result.post_s, 1),
        "drain, s": number(result.drain_s, 1),
        "bound ((calls - limit) ÷ limit), s": number(result.bound_s, 1),
        "drain ÷ bound": number(ratio, 2),
        "contacts correct": f"{result.correct} / {result.contacts_expected}"
        f" ({100 * result.correct / max(1, result.contacts_expected):.1f} %)",
        "  wrong fields": str(result.wrong_fields),
        "  wrong tags": str(result.wrong_tags),
        "  missing": str(result.missing),
        "  wrong with nothing left open": str(result.detail.get("wrong_with_nothing_open", "-")),
        "duplicate contacts": str(result.duplicates),
        "events given up (failed / dead)": str(result.lost),
        "left open at the end": str(result.detail.get("open", "-"))
        + (" (stuck)" if result.detail.get("stuck") else ""),
        "retries": str(result.retries),
    }


def table(
    info: dict[str, Any],
    args: argparse.Namespace,
    stream: dict[str, Any],
    results: Sequence[Result],
) -> str:
    lines = [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"{info['system']}, load {' '.join(str(x) for x in info['loadavg'])}",
        f"stream: {stream['events']} events over {stream['contacts']} contacts (seed "
        f"{args.seed}): {', '.join(f'{k} {v}' for k, v in stream['types'].items())}; "
        f"{stream['follow_within_1s']} events follow one of the same contact within 1 s",
        f"limit {args.calls} calls / {args.period:g} s on one channel; {args.workers} worker "
        f"process(es) x {args.concurrency} each side; posting: {args.pace}; the API answers"
        f" in {args.latency_ms:g} ms + its own time",
    ]
    rows = [cells(result) for result in results]
    width = max(len(name) for name in rows[0])
    column = max(14, *(len(v) for row in rows for v in row.values()))
    lines.append("".ljust(width) + "".join(f"  {r.side.rjust(column)}" for r in results))
    for name in rows[0]:
        lines.append(name.ljust(width) + "".join(f"  {row[name].rjust(column)}" for row in rows))
    for result in results:
        for example in result.examples:
            lines.append(f"{result.side}: {example}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.compare", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--events", type=int, default=2000, help="events in the stream (2000)")
    parser.add_argument("--contacts", type=int, default=300, help="contacts (300)")
    parser.add_argument("--calls", type=int, default=60, help="the limit's calls (60)")
    parser.add_argument("--period", type=float, default=6.0, help="the limit's period, s (6)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes a side (2)")
    parser.add_argument("--concurrency", type=int, default=4, help="per worker (4)")
    parser.add_argument("--seed", type=int, default=1, help="the stream's seed (1)")
    parser.add_argument("--only", choices=("ours", "baseline"), default=None)
    parser.add_argument("--pace", choices=("flood", "stream"), default="flood")
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the sandbox answers each call this much later, as a distant API would (0)",
    )
    parser.add_argument(
        "--stream-rate", type=float, default=20.0, help="events/s on average in the stream (20)"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=None,
        help="baseline drained after this long without a call, s (default: 2 periods, at least 5)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="per side, s")
    parser.add_argument(
        "--stall",
        type=float,
        default=None,
        help="ours: give up when no command settles for this long, s "
        "(default: 20 periods, at least 120)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="a Redis server URL without a db (default: start a private redis-server)",
    )
    parser.add_argument("--ours-redis-db", type=int, default=12, help="flushed (12)")
    parser.add_argument("--baseline-redis-db", type=int, default=13, help="flushed (13)")
    parser.add_argument("--progress-every", type=float, default=10.0, help="s between lines")
    parser.add_argument("--log-level", default="INFO", help="our workers' log level")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if min(args.events, args.contacts, args.calls, args.workers, args.concurrency) < 1:
        parser.error("sizes must be positive")
    if args.period <= 0:
        parser.error("--period must be positive")
    if args.quiet is None:
        args.quiet = max(5.0, 2 * args.period)
    if args.stall is None:
        args.stall = max(120.0, 20 * args.period)
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every process started here is stopped on the way out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    run = f"cmp{int(time.time())}"
    stream = generate(args.events, args.contacts, seed=args.seed, rate=args.stream_rate, run=run)
    expected = expected_state(timed.event for timed in stream)
    shape = describe(stream)
    folder = args.folder = Path(tempfile.mkdtemp(prefix="contactsync-compare-"))
    say(f"logs in {folder}; stream: {shape}")
    signal.signal(signal.SIGTERM, _terminate)
    private = None
    if not args.redis:
        private = PrivateRedis(folder)
        args.redis = private.url
    args.redis = args.redis.rstrip("/")
    results: list[Result] = []
    sandbox = None
    try:
        sandbox = SandboxProcess((args.calls, args.period), folder / "sandbox.log")
        if args.only in (None, "baseline"):
            results.append(run_baseline(stream, expected, args, sandbox, folder))
        if args.only in (None, "ours"):
            results.append(run_ours(stream, expected, args, sandbox, folder))
    finally:
        if sandbox is not None:
            sandbox.stop()
        if private is not None:
            private.stop()
        else:
            flush_redis(f"{args.redis}/{args.baseline_redis_db}")
            flush_redis(f"{args.redis}/{args.ours_redis_db}")
    print(table(info, args, shape, results), flush=True)
    if args.json:
        document = {
            "benchmark": "compare",
            "command": " ".join(["python -m ops.bench.compare", *sys.argv[1:]]),
            "machine": info,
            "settings": {
                k: v for k, v in vars(args).items() if k not in ("folder", "redis", "json")
            },
            "stream": shape,
            "fields_compared": ["email", *FIELDS],
            "results": [asdict(result) for result in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.keep:
        say(f"logs kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

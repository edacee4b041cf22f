"""The rate limit under a backlog: 1, 2 and 4 worker processes on Redis + PostgreSQL.

For each worker count: a fresh ledger database and an empty broker, the sandbox reset and
seeded with ``--events`` contacts, then ``--events`` ``contact.tag`` events addressed by
``contact_id`` (exactly one API call each) posted to the receiver, all before any worker
runs (``--warm``: after the workers are ready). ``--kind new`` posts instead one
``contact.upsert`` with a tag per new contact: three calls that depend on each other (a
lookup that finds nobody, a create, an add of the tag), as a CRM's import of new contacts
makes. ``--latency-ms`` has the sandbox take that long to answer each call, as the real
API over the internet does. Then N ``contactsync worker`` processes and
one ``contactsync beat`` start, and the benchmark waits until every command is settled in
the ledger. The sandbox's log of accepted calls is the judge of the limit; definitions and
figures are in docs/benchmarks.md.

    python -m ops.bench.ratelimit [--workers 1,2,4] [--calls 60 --period 6] [--events 600]
                                  [--concurrency 4] [--kind tag|new] [--latency-ms 0]
                                  [--json out.json]

The sandbox runs as its own ``contactsync sandbox`` process, as the real API is another
machine: its admission timestamps are then not disturbed by this process's GIL (polling
the ledger, the Flask test client, the Celery publisher). The broker is a ``redis-server``
of the benchmark's own (``--redis URL`` to use another): on the shared one, test sessions
flush a random database number and consume its queues. The ledger is a fresh PostgreSQL
database per worker count, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from flask.testing import FlaskClient
from sqlalchemy import func, select

from ops.bench.common import (
    SECRET,
    Processes,
    SandboxProcess,
    every,
    flush_redis,
    load,
    machine,
    private_redis,
    say,
    signed_headers,
    throwaway_postgres,
)
from webhooks.app import create_app
from worker.config import RateLimit, Settings, load_config
from worker.contacts_api.sandbox import DEMO_MAIN_TOKEN
from worker.contacts_api.sandbox_state import max_in_window
from worker.ledger.schema import commands
from worker.runtime import Runtime

CHANNEL = "main"
SOURCE = "bench"
BATCH = 100  # the receiver's largest batch
KINDS = {
    "tag": ("contact.tag events", 1),
    "new": ("contact.upsert events of new contacts with a tag", 3),
}
"""Each ``--kind``: what its events are, and the API calls one takes (a tag; a lookup, a
create and a tag)."""


@dataclass
class Result:
    """One worker count's figures."""

    workers: int
    events: int
    calls: int
    kind: str
    """``--kind``: what each event asks (``tag``: one call; ``new``: three)."""
    drain_s: float | None
    """Workers started → last command settled in the ledger (``None``: timed out)."""
    bound_s: float
    """``calls / (limit calls / period)``."""
    span_s: float
    """First → last accepted call."""
    first_call_s: float
    """Workers started → first accepted call (process start-up)."""
    utilisation: float | None
    """Ideal span ÷ measured span (see :func:`utilisation`)."""
    max_in_window: int
    limit: int
    refused_429: int
    done: int
    dead: int
    statuses: dict[str, int]
    windows: list[int]
    """Accepted calls in consecutive periods from the first call: the shape of the drain."""
    burst_s: float
    """First → ``limit``-th accepted call: how long the first burst took to go out."""
    step_s: float | None
    """Mean time from each call to the one ``limit`` places later: the period the limiter
    kept in practice (ideal: the period; by design: period + margin)."""
    min_step_s: float | None = None
    """The smallest ``t[i] - t[i - limit]``: never below the period (the sandbox refuses
    the call instead); how far above it says how much of the margin jitter left."""
    times: list[float] = field(default_factory=list)
    """Accepted calls, seconds from the first (JSON only)."""
    diagnosis: dict[str, Any] | None = None
    """With ``--diagnose``: see :func:`diagnose`."""
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)


def utilisation(times: Sequence[float], calls: int, period_s: float) -> float | None:
    """Share of the limit used from the first accepted call to the last.

    A perfect limiter sends the first ``calls`` at once and each further ``calls`` one
    period later, so ``n`` calls need at least ``(n - calls) / calls * period_s`` from first
    to last. Utilisation is that ideal span over the measured one (equivalently: calls made
    after the first burst ÷ calls the limit allowed in the time they took). ``None`` when the
    whole backlog fits in one burst.
    """
    ordered = sorted(times)
    if len(ordered) <= calls:
        return None
    span = ordered[-1] - ordered[0]
    ideal = (len(ordered) - calls) / calls * period_s
    return ideal / span if span > 0 else None


def windows(times: Sequence[float], period_s: float) -> list[int]:
    """Accepted calls in consecutive windows of ``period_s`` from the first one."""
    ordered = sorted(times)
    if not ordered:
        return []
    counts = [0] * (int((ordered[-1] - ordered[0]) // period_s) + 1)
    for at in ordered:
        counts[int((at - ordered[0]) // period_s)] += 1
    return counts


def step(times: Sequence[float], calls: int) -> float | None:
    """Mean of ``t[i] - t[i - calls]``: the period the limiter kept in practice."""
    ordered = sorted(times)
    gaps = [ordered[i] - ordered[i - calls] for i in range(calls, len(ordered))]
    return sum(gaps) / len(gaps) if gaps else None


def diagnose(logs: Sequence[Path]) -> dict[str, Any]:
    """From the workers' DEBUG JSON logs: commands deferred more than once (a held start
    missed by more than the tolerance, so re-reserved at the end of the schedule: without
    429s nothing else defers a command twice), and how long delayed messages waited for a
    thread between their ETA and their start (``lead_s`` is what they may spend)."""
    deferrals: Counter[int] = Counter()
    eta: dict[str, float] = {}
    waits = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            message = entry.get("msg", "")
            if entry.get("logger") == "worker.tasks" and " deferred: " in message:
                deferrals[int(message.split()[1])] += 1
            elif entry.get("logger") == "celery.pool" and "'eta': '" in message:
                task = re.search(r"'id': '([0-9a-f-]+)'", message)
                at = re.search(r"'eta': '([^']+)'", message)
                if task and at:
                    eta[task.group(1)] = datetime.fromisoformat(at.group(1)).timestamp()
            elif entry.get("logger") == "celery.worker.request" and "accepted" in message:
                task = re.search(r"\[([0-9a-f-]+)\]", message)
                if task and task.group(1) in eta:
                    waits.append(entry["ts"] - eta.pop(task.group(1)))
    waits.sort()

    def quantile(share: float) -> float | None:
        return round(waits[min(len(waits) - 1, int(share * len(waits)))], 3) if waits else None

    return {
        "deferrals": sum(deferrals.values()),
        "missed_starts": sum(n - 1 for n in deferrals.values() if n > 1),
        "eta_to_thread_s": {
            "n": len(waits),
            "median": quantile(0.5),
            "p90": quantile(0.9),
            "max": round(waits[-1], 3) if waits else None,
        },
    }


def write_config(path: Path, api_url: str, args: argparse.Namespace) -> Path:
    """The product config: one channel at the benchmark's limit, worker settings default."""
    limit: dict[str, Any] = {"calls": args.calls, "period_s": args.period}
    if args.margin is not None:
        limit["margin_s"] = args.margin
    document = {
        "contacts_api": {"base_url": api_url},
        "channels": {
            CHANNEL: {"token": DEMO_MAIN_TOKEN, "platform": "whatsapp", "rate_limit": limit}
        },
        "sources": {SOURCE: {"kind": "generic", "secret": SECRET, "channel": CHANNEL}},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def tag_events(ids: Sequence[str], run: str) -> list[dict[str, Any]]:
    """One ``contact.tag`` event per contact id: one API call each."""
    return [
        {
            "id": f"{run}-{i}",
            "type": "contact.tag",
            "channel": CHANNEL,
            "contact_id": contact_id,
            "tags": ["bench"],
        }
        for i, contact_id in enumerate(ids)
    ]


def new_contact_events(count: int, run: str) -> list[dict[str, Any]]:
    """One ``contact.upsert`` with a tag per contact no one has created yet: a lookup that
    finds nobody, a create, an add of the tag, each waiting for the one before."""
    return [
        {
            "id": f"{run}-{i}",
            "type": "contact.upsert",
            "channel": CHANNEL,
            "match": {"email": f"{run}-{i}@example.com"},
            "fields": {"firstName": f"New {i}"},
            "tags": ["bench"],
        }
        for i in range(count)
    ]


def run_one(
    workers: int,
    args: argparse.Namespace,
    sandbox: SandboxProcess,
    redis_url: str,
    folder: Path,
) -> Result:
    """Backlog first, then ``workers`` worker processes; wait for the drain."""
    sandbox.reset(latency_ms=args.latency_ms)
    ids = sandbox.seed(CHANNEL, args.events) if args.kind == "tag" else []
    flush_redis(redis_url)  # the previous worker count's leftovers
    label = f"w{workers}"
    with throwaway_postgres() as database_url:
        config_path = write_config(folder / f"{label}.yaml", sandbox.api_url, args)
        data_dir = folder / f"{label}-data"
        settings = Settings(
            config=config_path,
            data_dir=data_dir,
            broker_url=redis_url,
            database_url=database_url,
        )
        runtime = Runtime(settings, load_config(config_path))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
        env.update(
            CONTACTSYNC_CONFIG=str(config_path),
            CONTACTSYNC_DATA_DIR=str(data_dir),
            CONTACTSYNC_BROKER_URL=redis_url,
            CONTACTSYNC_DATABASE_URL=database_url,
            CONTACTSYNC_LOG_LEVEL="DEBUG" if args.diagnose else "INFO",
            CONTACTSYNC_LOG_FORMAT="json" if args.diagnose else "text",
            PYTHONUNBUFFERED="1",
        )
        processes = Processes(folder, env)
        try:
            http = create_app(runtime).test_client()
            run = f"bench-{label}-{int(time.time())}"
            events = (
                tag_events(ids, run) if args.kind == "tag" else new_contact_events(args.events, run)
            )
            if args.warm:
                start_processes(processes, label, workers, args.concurrency)
                wait_until_ready(processes, label, workers)
                say(f"{workers} worker(s) ready; posting {args.events} events")
            load_before = load()
            started_wall, started = time.time(), time.monotonic()
            post(http, events)
            if not args.warm:
                pending = runtime.ledger.counts()["pending"]
                if pending != args.events:
                    raise RuntimeError(f"{pending} commands pending, expected {args.events}")
                say(f"{workers} worker(s): {args.events} commands in the backlog; starting")
                load_before = load()
                started_wall, started = time.time(), time.monotonic()
                start_processes(processes, label, workers, args.concurrency)
            counts = wait_for_drain(runtime, processes, sandbox, args, workers, started)
            drained = counts["pending"] + counts["running"] + counts["scheduled"] == 0
            with runtime.ledger.engine.connect() as connection:
                finished = connection.execute(select(func.max(commands.c.finished_at))).scalar()
            drain_s = float(finished) - started_wall if drained and finished else None
        finally:
            processes.stop()
            runtime.ledger.engine.dispose()
            runtime.celery.close()  # the receiver published with it
        load_after = load()
    summary = sandbox.log()["channels"][CHANNEL]
    times = sorted(call["at"] for call in sandbox.calls(CHANNEL))
    return Result(
        workers=workers,
        events=args.events,
        calls=len(times),
        kind=args.kind,
        drain_s=drain_s,
        bound_s=len(times) * args.period / args.calls,
        span_s=times[-1] - times[0] if times else 0.0,
        first_call_s=times[0] - started if times else math.nan,
        utilisation=utilisation(times, args.calls, args.period),
        max_in_window=max_in_window(times, args.period),
        limit=args.calls,
        refused_429=int(summary["refused"].get("429", 0)),
        done=counts["done"],
        dead=counts["dead"],
        statuses=dict(summary["statuses"]),
        windows=windows(times, args.period),
        burst_s=times[min(args.calls, len(times)) - 1] - times[0] if times else 0.0,
        step_s=step(times, args.calls),
        min_step_s=min(
            (times[i] - times[i - args.calls] for i in range(args.calls, len(times))),
            default=None,
        ),
        times=[round(at - times[0], 4) for at in times],
        load_before=load_before,
        load_after=load_after,
        diagnosis=diagnose(sorted(folder.glob(f"{label}-worker*.log"))) if args.diagnose else None,
    )


def post(http: FlaskClient, events: Sequence[dict[str, Any]]) -> None:
    """Post signed batches to the receiver; each must be accepted."""
    for start in range(0, len(events), BATCH):
        body = json.dumps(events[start : start + BATCH]).encode()
        answer = http.post(f"/webhooks/{SOURCE}", data=body, headers=signed_headers(body))
        if answer.status_code != 202:
            raise RuntimeError(f"receiver answered {answer.status_code}: {answer.text}")


def start_processes(processes: Processes, label: str, workers: int, concurrency: int) -> None:
    """``workers`` worker processes and one ``contactsync beat``."""
    for number in range(workers):
        processes.start(f"{label}-worker{number}", "worker", "--concurrency", str(concurrency))
    processes.start(f"{label}-beat", "beat")


def wait_until_ready(processes: Processes, label: str, workers: int, timeout: float = 120) -> None:
    """Until every worker has logged Celery's "ready." line."""
    deadline = time.monotonic() + timeout
    logs = [processes.folder / f"{label}-worker{number}.log" for number in range(workers)]
    while not all(" ready." in path.read_text(errors="replace") for path in logs):
        if processes.exited() or time.monotonic() > deadline:
            raise RuntimeError(f"workers not ready; logs in {processes.folder}")
        time.sleep(0.2)


def wait_for_drain(
    runtime: Runtime,
    processes: Processes,
    sandbox: SandboxProcess,
    args: argparse.Namespace,
    workers: int,
    started: float,
) -> dict[str, int]:
    """Poll the ledger until nothing is left to do (or the timeout); progress on stderr."""
    calls = args.events * KINDS[args.kind][1]
    timeout = args.timeout or 3 * calls * args.period / args.calls + 60
    progress = every(args.progress_every)
    while True:
        counts = runtime.ledger.counts()
        left = counts["pending"] + counts["running"] + counts["scheduled"]
        elapsed = time.monotonic() - started
        if progress() or not left:
            summary = sandbox.log()["channels"][CHANNEL]
            say(
                f"  {workers} worker(s) {elapsed:6.1f} s: done {counts['done']}/{args.events}"
                f", dead {counts['dead']}, calls {summary['accepted']}"
                f", 429s {summary['refused'].get('429', 0)}"
                f", max in window {summary['max_in_window']}/{args.calls}"
            )
        if not left:
            return counts
        stopped = processes.exited()
        if stopped:
            raise RuntimeError(f"{', '.join(stopped)} exited; logs in {processes.folder}")
        if elapsed > timeout:
            say(f"  timed out after {timeout:.0f} s with {left} commands left")
            return counts
        time.sleep(0.2)


COLUMNS = (
    ("workers", 7),
    ("events", 6),
    ("calls", 5),
    ("drain s", 7),
    ("bound s", 7),
    ("drain/bound", 11),
    ("util %", 6),
    ("max/limit", 9),
    ("429s", 4),
    ("1st call s", 10),
    ("span s", 6),
    ("burst s", 7),
    ("step s", 6),
    ("min step", 8),
    ("load", 9),
)


def header(info: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The lines naming the machine and the set-up."""
    what, calls_each = KINDS[args.kind]
    margin = args.margin if args.margin is not None else RateLimit().margin_s
    ceiling = args.period / (args.period + margin)
    return [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"{info['system']}, load {' '.join(str(x) for x in info['loadavg'])}; "
        f"code {info['revision']}",
        f"limit {args.calls} calls / {args.period:g} s, margin {margin:g} s "
        f"(limiter ceiling {ceiling:.1%}); {args.events} {what}, {calls_each} call(s) each; "
        f"the API answers in {args.latency_ms:g} ms + its own time; "
        f"Redis ({args.redis or 'its own redis-server'}) + PostgreSQL; "
        f"{args.concurrency} threads per worker; "
        + ("workers ready before the backlog is posted" if args.warm else "backlog before workers"),
    ]


def row(result: Result) -> str:
    """One table line."""

    def number(value: float | None, digits: int) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    ratio = result.drain_s / result.bound_s if result.drain_s and result.bound_s else None
    cells = (
        str(result.workers),
        str(result.events),
        str(result.calls),
        number(result.drain_s, 1),
        number(result.bound_s, 1),
        number(ratio, 3),
        number(result.utilisation and result.utilisation * 100, 1),
        f"{result.max_in_window}/{result.limit}",
        str(result.refused_429),
        number(result.first_call_s, 1),
        number(result.span_s, 1),
        number(result.burst_s, 2),
        number(result.step_s, 3),
        number(result.min_step_s, 3),
        "/".join(f"{x:.1f}" for x in (result.load_before[:1] + result.load_after[:1])),
    )
    return "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))


def table(info: dict[str, Any], args: argparse.Namespace, results: Sequence[Result]) -> str:
    """The report printed on stdout."""
    lines = header(info, args)
    lines.append("  ".join(name.rjust(width) for name, width in COLUMNS))
    lines += [row(result) for result in results]
    for result in results:
        problems = []
        if result.max_in_window > result.limit:
            problems.append(f"LIMIT EXCEEDED ({result.max_in_window} > {result.limit})")
        if result.refused_429:
            problems.append(f"{result.refused_429} calls refused with 429")
        if result.drain_s is None:
            problems.append("did not drain before the timeout")
        expected = result.events * KINDS[result.kind][1]
        if result.dead or result.calls != expected:
            problems.append(f"{result.dead} dead, {result.calls} calls for {result.events}")
        if problems:
            lines.append(f"{result.workers} worker(s): " + "; ".join(problems))
        if result.diagnosis:
            waits = result.diagnosis["eta_to_thread_s"]
            lines.append(
                f"{result.workers} worker(s): {result.diagnosis['missed_starts']} missed starts"
                f" in {result.diagnosis['deferrals']} deferrals; delayed messages waited"
                f" {waits['median']} s (median), {waits['p90']} s (p90), {waits['max']} s (max)"
                " for a thread"
            )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.ratelimit", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--workers", default="1,2,4", help="worker process counts (1,2,4)")
    parser.add_argument("--calls", type=int, default=60, help="the limit's calls (60)")
    parser.add_argument("--period", type=float, default=6.0, help="the limit's period, s (6)")
    parser.add_argument(
        "--margin",
        type=float,
        default=None,
        help="the limiter's margin_s (default: the product's, 0.25 s)",
    )
    parser.add_argument("--events", type=int, default=600, help="backlog size (600)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker (4)")
    parser.add_argument(
        "--kind",
        choices=sorted(KINDS),
        default="tag",
        help="tag: a tag of a known contact (1 call); new: an upsert of a new contact with"
        " a tag (lookup, create, tag: 3 calls, each after the last) (tag)",
    )
    parser.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="the sandbox answers each call this much later, as a distant API would (0)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="a Redis URL to use (flushed before and after), e.g. redis://127.0.0.1:6379/14;"
        " default: a redis-server of the benchmark's own on a free port",
    )
    parser.add_argument("--timeout", type=float, default=None, help="per worker count, s")
    parser.add_argument("--progress-every", type=float, default=3.0, help="s between lines")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="start the workers first and post the backlog once they are ready"
        " (times then run from the first post)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="workers log DEBUG as JSON; report missed starts and thread waits (slower)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the processes' logs (kept anyway when odd)"
    )
    args = parser.parse_args(argv)
    args.worker_counts = [int(n) for n in args.workers.split(",") if n.strip()]
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers: a comma-separated list of positive numbers")
    if args.calls < 1 or args.period <= 0 or args.events < 1:
        parser.error("--calls, --period and --events must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    folder = Path(tempfile.mkdtemp(prefix="contactsync-bench-"))
    say(f"logs in {folder}")
    with ExitStack() as stack:
        if args.redis:
            redis_url = args.redis
            held = flush_redis(redis_url)
            if held:
                say(f"note: {redis_url} held {held} keys (another run?); flushed")
            stack.callback(flush_redis, redis_url)
        else:
            redis_url = stack.enter_context(private_redis(folder))
        sandbox = SandboxProcess((args.calls, args.period), folder / "sandbox.log")
        stack.callback(sandbox.stop)
        results = [
            run_one(workers, args, sandbox, redis_url, folder) for workers in args.worker_counts
        ]
    sys.stderr.flush()
    print(table(info, args, results), flush=True)
    if args.json:
        margin = args.margin if args.margin is not None else RateLimit().margin_s
        document = {
            "benchmark": "ratelimit",
            "command": " ".join(["python -m ops.bench.ratelimit", *(sys.argv[1:])]),
            "machine": info,
            "settings": {
                "calls": args.calls,
                "period_s": args.period,
                "margin_s": margin,
                "events": args.events,
                "concurrency": args.concurrency,
                "redis": args.redis or "own redis-server",
                "warm": args.warm,
            },
            "results": [asdict(result) for result in results],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    odd = [r for r in results if r.first_call_s > 5 or (r.utilisation or 1) < 0.8]
    if args.keep or args.diagnose or odd:
        say(f"logs kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    failed = any(r.max_in_window > r.limit or r.refused_429 or r.drain_s is None for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

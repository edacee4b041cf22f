"""A bounded soak run: steady load on a real stack, watching for leaks.

Starts the sandbox (its own process), ``contactsync web`` (gunicorn) on a fresh PostgreSQL
database and a dedicated Redis database number (on a private ``redis-server`` unless
``--redis`` names a shared one), two ``contactsync worker`` processes and ``contactsync
beat``; then posts signed generic events at a fixed rate over a few thousand
contacts (the seeded stream of ops/bench/stream.py: upserts, tags and untags in bursts) for
``--minutes``. Every ``--sample-every`` seconds it records, for each process (its whole
process tree: gunicorn's workers, Celery's pool), resident memory (psutil if installed, else
``VmRSS`` in /proc/<pid>/status) and open file descriptors (/proc/<pid>/fd), and the number
of PostgreSQL connections to the run's database (pg_stat_activity).

At the end it stops the load, waits for the backlog to drain, and checks that no event was
lost: every event answered 202 is in the ledger, every command is done, and the sandbox's
contacts are exactly what the stream should leave. It prints a table (start, middle, end,
max per process) and a verdict per process:

- memory grows when the median RSS of the last 3 samples under load is more than
  ``--rss-growth`` (20 %) above the baseline: the median over the first 5 minutes after a
  60 s warm-up (the first third of the loaded time after warm-up, in runs under 16 minutes);
- file descriptors and PostgreSQL connections grow when the median of each third of the
  post-warm-up samples is higher than the one before and the last exceeds the baseline's
  max by more than pools explain (5 fds / 2 connections, or 10 %, whichever is larger).

The sandbox keeps every call it accepts in memory (its call log) and the private Redis is
the broker, so their figures are reported, not judged. Exit status 0 when nothing grew and
nothing was lost.

    python -m ops.soak [--minutes 20] [--rate 20] [--contacts 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests
import yaml

from ops.bench.common import (
    REDIS_HOST,
    SECRET,
    PrivateRedis,
    Processes,
    SandboxProcess,
    flush_redis,
    machine,
    say,
    signed_headers,
    throwaway_postgres,
)
from ops.bench.compare import judge
from ops.bench.stream import CHANNEL, describe, expected_state, generate
from worker.contacts_api.sandbox import DEMO_MAIN_TOKEN

SOURCE = "soak"
NOT_JUDGED = frozenset({"sandbox", "redis"})
"""Helpers of the run, not contactsync: reported, not judged."""
WARMUP_S = 60.0
BASELINE_S = 300.0
SLACK = {"fds": 5, "connections": 2}
"""Pools open connections lazily up to their bound (SQLAlchemy, requests, Redis), so a count
must pass the baseline's max by this much, or 10 %, whichever is larger, to be growth."""
CALLS_PER_MINUTE = 6000
"""The sandbox's and the channel's limit: far above the load, so the limit is not the test."""

try:  # optional: used when installed
    import psutil
except ImportError:  # pragma: no cover - the /proc fallback is what runs here
    psutil = None


# -- what a process uses --------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process on the machine (from /proc)."""
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after its end.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found.setdefault(parent, []).append(int(entry))
    return found


def tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_kib(pid: int) -> int:
    """Resident memory in KiB (0 when the process is gone)."""
    if psutil is not None:
        try:
            return int(psutil.Process(pid).memory_info().rss // 1024)
        except psutil.Error:
            return 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def fd_count(pid: int) -> int:
    """Open file descriptors (0 when the process is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


@dataclass
class Sample:
    """One look at every process and the database."""

    at: float
    """Seconds since the load started."""
    loaded: bool
    rss_mib: dict[str, float]
    fds: dict[str, int]
    procs: dict[str, int]
    pg_connections: int
    ledger: dict[str, int]
    sent: int


class Watcher:
    """Samples the processes started for the run and the run's database."""

    def __init__(self, pids: dict[str, int], database_url: str) -> None:
        self.pids = pids
        self.db = psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"))
        self.db.autocommit = True

    def sample(self, at: float, *, loaded: bool, sent: int) -> Sample:
        children = _children()
        rss: dict[str, float] = {}
        fds: dict[str, int] = {}
        procs: dict[str, int] = {}
        for label, pid in self.pids.items():
            pids = tree(pid, children)
            rss[label] = round(sum(rss_kib(p) for p in pids) / 1024, 1)
            fds[label] = sum(fd_count(p) for p in pids)
            procs[label] = len(pids)
        # This connection is to the run's database too: leave it out of the count.
        connections = self.db.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
        states = self.db.execute("SELECT state, count(*) FROM commands GROUP BY state").fetchall()
        return Sample(
            at=round(at, 1),
            loaded=loaded,
            rss_mib=rss,
            fds=fds,
            procs=procs,
            pg_connections=int(connections[0]) if connections else 0,
            ledger={str(state): int(count) for state, count in states},
            sent=sent,
        )

    def events_recorded(self) -> set[str]:
        rows = self.db.execute("SELECT key FROM events WHERE source = %s", (SOURCE,)).fetchall()
        return {str(row[0]) for row in rows}

    def close(self) -> None:
        self.db.close()


# -- load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """Posts the stream's events at a fixed rate, in order, on one keep-alive connection."""

    url: str
    events: list[dict[str, Any]]
    rate: float
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0
    accepted: list[str] = field(default_factory=list)
    """Ids of the events answered 202."""
    statuses: Counter[str] = field(default_factory=Counter)
    late_s: float = 0.0
    """The most the sender fell behind its schedule."""
    latencies_ms: list[float] = field(default_factory=list)

    def run(self) -> None:
        session = requests.Session()
        started = time.monotonic()
        for index, event in enumerate(self.events):
            if self.stop.is_set():
                break
            due = started + index / self.rate
            wait = due - time.monotonic()
            if wait > 0:
                self.stop.wait(wait)
            else:
                self.late_s = max(self.late_s, -wait)
            body = json.dumps(event).encode()
            before = time.monotonic()
            try:
                answer = session.post(self.url, data=body, headers=signed_headers(body), timeout=30)
                status = str(answer.status_code)
            except requests.RequestException as error:
                status = type(error).__name__
            self.latencies_ms.append((time.monotonic() - before) * 1000)
            self.statuses[status] += 1
            if status == "202":
                self.accepted.append(event["id"])
            self.sent += 1
        session.close()


# -- judging -------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _thirds(values: Sequence[float]) -> list[float]:
    size = len(values) // 3
    if size < 1:
        return []
    return [_median(values[i * size : (i + 1) * size]) for i in range(2)] + [
        _median(values[2 * size :])
    ]


def trend(
    samples: list[Sample], value: Any, *, loaded_s: float, rss_growth: float, kind: str
) -> dict[str, Any]:
    """Start / middle / end / max of one series, and whether it grows (see the docstring)."""
    loaded = [s for s in samples if s.loaded]
    series = [float(value(s)) for s in loaded]
    if not series:
        return {"start": None, "middle": None, "end": None, "max": None, "grows": None}
    settled = [s for s in loaded if s.at >= WARMUP_S] or loaded
    window = min(BASELINE_S, max(30.0, (loaded_s - WARMUP_S) / 3))
    first = settled[0].at
    base = [float(value(s)) for s in settled if s.at <= first + window]
    after = [float(value(s)) for s in settled]
    baseline = _median(base)
    end = _median(after[-3:])
    figures: dict[str, Any] = {
        "start": series[0],
        "middle": series[len(series) // 2],
        "end": series[-1],
        "max": max(series),
        "baseline": baseline,
        "end_median": end,
    }
    if kind == "rss":
        growth = (end / baseline - 1) if baseline else 0.0
        figures["growth"] = round(growth, 3)
        figures["grows"] = growth > rss_growth
        if len(settled) >= 2:  # a least-squares slope, MiB per hour, for the record
            xs = [s.at for s in settled]
            mean_x, mean_y = statistics.fmean(xs), statistics.fmean(after)
            spread = sum((x - mean_x) ** 2 for x in xs)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, after, strict=True))
            figures["slope_mib_per_h"] = round(slope / spread * 3600, 1) if spread else 0.0
    else:
        thirds = _thirds(after)
        rising = len(thirds) == 3 and thirds[0] < thirds[1] < thirds[2]
        allowance = max(SLACK[kind], 0.10 * max(base))
        figures["thirds"] = thirds
        figures["grows"] = bool(rising and end > max(base) + allowance)
    return figures


def table(report: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    lines = [
        "| process | measure | start | middle | end | max | baseline → end | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, series in report["series"].items():
        for measure, figures in series.items():
            if figures["start"] is None:
                continue
            if measure == "rss_mib":
                growth = f"{figures['growth']:+.0%}"
                change = f"{figures['baseline']:g} → {figures['end_median']:g} ({growth})"
                unit = "RSS MiB"
            else:
                change = f"{figures['baseline']:g} → {figures['end_median']:g}"
                unit = {"fds": "open fds", "connections": "connections"}[measure]
            verdict = "grows" if figures["grows"] else "flat"
            if label in NOT_JUDGED:
                verdict += " (not judged)"
            lines.append(
                f"| {label} | {unit} | {figures['start']:g} | {figures['middle']:g} | "
                f"{figures['end']:g} | {figures['max']:g} | {change} | {verdict} |"
            )
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------------


def write_config(folder: Path, api_url: str) -> Path:
    document = {
        "contacts_api": {"base_url": api_url},
        "channels": {
            CHANNEL: {
                "token": DEMO_MAIN_TOKEN,
                "platform": "whatsapp",
                "rate_limit": {"calls": CALLS_PER_MINUTE, "period_s": 60},
            }
        },
        "sources": {SOURCE: {"kind": "generic", "secret": SECRET, "channel": CHANNEL}},
    }
    path = folder / "contactsync.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, processes: Processes, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if processes.exited():
            raise RuntimeError(f"exited during start-up: {processes.exited()}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout:.0f} s")


def pick_redis_db(server: str, wanted: int) -> str:
    """The Redis database to use: ``wanted``, refused when it holds keys (not ours to flush)."""
    url = f"{server.rstrip('/')}/{wanted}"
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        keys = int(client.dbsize())
    finally:
        client.close()
    if keys:
        raise SystemExit(f"Redis db {wanted} holds {keys} keys; choose another with --redis-db")
    return url


def soak(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    total = int(seconds * args.rate)
    run = f"soak{int(time.time())}"
    stream = generate(total, args.contacts, seed=args.seed, rate=args.rate, run=run)
    events = [timed.event for timed in stream]
    folder = Path(tempfile.mkdtemp(prefix="contactsync-soak-"))
    say(f"soak: {args.minutes:g} min at {args.rate:g}/s = {total} events; logs in {folder}")
    say(f"stream: {describe(stream)}")
    private = None if args.redis else PrivateRedis(folder)
    broker = pick_redis_db(args.redis or private.url, args.redis_db)  # type: ignore[union-attr]
    processes: Processes | None = None
    sandbox: SandboxProcess | None = None
    watcher: Watcher | None = None
    samples: list[Sample] = []
    load: Load | None = None
    report: dict[str, Any] = {}
    with throwaway_postgres("contactsync_soak") as database_url:
        try:
            sandbox = SandboxProcess((CALLS_PER_MINUTE, 60.0), folder / "sandbox.log")
            config = write_config(folder, sandbox.api_url)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
            env |= {
                "CONTACTSYNC_CONFIG": str(config),
                "CONTACTSYNC_DATA_DIR": str(folder / "data"),
                "CONTACTSYNC_DATABASE_URL": database_url,
                "CONTACTSYNC_BROKER_URL": broker,
                "CONTACTSYNC_LOG_LEVEL": args.log_level,
                "PYTHONUNBUFFERED": "1",
            }
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            processes = Processes(folder, env)
            port = free_port()
            processes.start("migrate", "migrate").wait(60)
            processes.running.pop("migrate")
            processes.start("web", "web", "--port", str(port), "--workers", str(args.web_workers))
            for n in range(1, args.workers + 1):
                processes.start(f"worker-{n}", "worker", "--concurrency", str(args.concurrency))
            processes.start("beat", "beat")
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, processes)
            pids = {label: p.pid for label, p in processes.running.items()}
            pids["sandbox"] = sandbox.process.pid
            if private is not None:
                pids["redis"] = private.process.pid
            watcher = Watcher(pids, database_url)
            load = Load(f"{url}/webhooks/{SOURCE}", events, args.rate)
            sender = threading.Thread(target=load.run, name="load", daemon=True)
            started = time.monotonic()
            sender.start()
            say(f"load started; sampling every {args.sample_every:g} s")
            while sender.is_alive():
                now = time.monotonic() - started
                sample = watcher.sample(now, loaded=True, sent=load.sent)
                samples.append(sample)
                say(progress(sample))
                if processes.exited():
                    raise RuntimeError(f"exited during the run: {processes.exited()}")
                sender.join(max(0.0, args.sample_every - (time.monotonic() - started - now)))
            loaded_s = time.monotonic() - started
            say(f"load done: {load.sent} sent in {loaded_s:.0f} s; draining")
            drained_at = drain(watcher, samples, started, load, args.drain_timeout, say)
            recorded = watcher.events_recorded()
            contacts = sandbox.admin("GET", f"contacts?channel={CHANNEL}")["data"]
            accepted = set(load.accepted)
            expected = expected_state(e for e in events if e["id"] in accepted | recorded)
            verdict = judge(contacts, expected)
            final = samples[-1]
            lost = sorted(set(load.accepted) - recorded)
            open_left = sum(final.ledger.get(s, 0) for s in ("pending", "running", "scheduled"))
            report = {
                "machine": machine(),
                "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "events": total,
                "sent": load.sent,
                "statuses": dict(load.statuses),
                "sender_late_max_s": round(load.late_s, 2),
                "latency_ms": latency(load.latencies_ms),
                "loaded_s": round(loaded_s, 1),
                "drain_s": None if drained_at is None else round(drained_at - loaded_s, 1),
                "lost": {
                    "accepted_not_recorded": len(lost),
                    "examples": lost[:5],
                    "open_commands": open_left,
                    "dead_commands": final.ledger.get("dead", 0),
                    "done_commands": final.ledger.get("done", 0),
                    "contacts_expected": len(expected),
                    "contacts_correct": verdict["correct"],
                    "contact_problems": verdict["examples"],
                },
                "series": series(samples, pids, loaded_s, args.rss_growth),
                "samples": [vars(s) for s in samples],
                "folder": str(folder),
            }
        finally:
            if load is not None:
                load.stop.set()
            if watcher is not None:
                watcher.close()
            if processes is not None:
                processes.stop()
            if sandbox is not None:
                sandbox.stop()
            flush_redis(broker)
            if private is not None:
                private.stop()
    if report and not args.keep:
        shutil.rmtree(folder / "data", ignore_errors=True)
    return report


def drain(
    watcher: Watcher,
    samples: list[Sample],
    started: float,
    load: Load,
    timeout: float,
    say: Any,
) -> float | None:
    """Sample (not under load) until no command is open; when that happened, or None."""
    deadline = time.monotonic() + timeout
    while True:
        sample = watcher.sample(time.monotonic() - started, loaded=False, sent=load.sent)
        samples.append(sample)
        open_now = sum(sample.ledger.get(s, 0) for s in ("pending", "running", "scheduled"))
        if open_now == 0:
            return sample.at
        if time.monotonic() > deadline:
            say(f"gave up draining: {open_now} commands still open")
            return None
        if len(samples) % 5 == 0:
            say(progress(sample))
        time.sleep(2)


def latency(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 1)}


def series(
    samples: list[Sample], pids: dict[str, int], loaded_s: float, rss_growth: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in pids:
        out[label] = {
            "rss_mib": trend(
                samples,
                lambda s, k=label: s.rss_mib[k],
                loaded_s=loaded_s,
                rss_growth=rss_growth,
                kind="rss",
            ),
            "fds": trend(
                samples,
                lambda s, k=label: s.fds[k],
                loaded_s=loaded_s,
                rss_growth=rss_growth,
                kind="fds",
            ),
        }
    out["postgresql"] = {
        "connections": trend(
            samples,
            lambda s: s.pg_connections,
            loaded_s=loaded_s,
            rss_growth=rss_growth,
            kind="connections",
        )
    }
    return out


def progress(sample: Sample) -> str:
    rss = " ".join(f"{k}={v:g}M/{sample.fds[k]}fd" for k, v in sample.rss_mib.items())
    backlog = sum(sample.ledger.get(s, 0) for s in ("pending", "running", "scheduled"))
    return (
        f"t={sample.at:6.0f}s sent={sample.sent} done={sample.ledger.get('done', 0)} "
        f"open={backlog} pg={sample.pg_connections} {rss}"
    )


def verdict(report: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether the run passed, and why not."""
    problems = []
    for label, measures in report["series"].items():
        if label in NOT_JUDGED:
            continue
        for measure, figures in measures.items():
            if figures.get("grows"):
                problems.append(f"{label} {measure} grows: {figures}")
    lost = report["lost"]
    if lost["accepted_not_recorded"]:
        problems.append(f"{lost['accepted_not_recorded']} accepted events are not in the ledger")
    if lost["open_commands"] or lost["dead_commands"]:
        problems.append(f"{lost['open_commands']} open, {lost['dead_commands']} dead commands")
    if lost["contacts_correct"] != lost["contacts_expected"]:
        problems.append(
            f"{lost['contacts_expected'] - lost['contacts_correct']} contacts differ "
            f"from the model: {lost['contact_problems']}"
        )
    others = {k: v for k, v in report["statuses"].items() if k != "202"}
    if others:
        problems.append(f"answers other than 202: {others}")
    return not problems, problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ops.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="loaded time (20)")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second (20)")
    parser.add_argument("--contacts", type=int, default=3000, help="distinct contacts (3000)")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--concurrency", type=int, default=4, help="threads per worker (4)")
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn processes (2)")
    parser.add_argument(
        "--redis",
        default=None,
        help=f"a Redis server URL without a db, e.g. {REDIS_HOST} (default: start a private "
        "redis-server: test sessions on the shared one flush random db numbers)",
    )
    parser.add_argument(
        "--redis-db", type=int, default=14, help="must be empty; flushed (14; tests keep to 1-8)"
    )
    parser.add_argument("--rss-growth", type=float, default=0.20, help="RSS verdict (0.20)")
    parser.add_argument("--drain-timeout", type=float, default=300.0, help="seconds (300)")
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument("--log-level", default="WARNING", help="the processes' (WARNING)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the run's data folder")
    parser.add_argument(
        "--rejudge", type=Path, default=None, help="judge a saved --json report again, no run"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or min(args.contacts, args.workers) < 1:
        parser.error("--minutes, --rate, --contacts and --workers must be positive")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that every process started here is stopped on the way out


def rejudge(path: Path, rss_growth: float) -> dict[str, Any]:
    """A saved report judged again (by the rules of this version) from its samples."""
    report = dict(json.loads(path.read_text()))
    samples = [Sample(**sample) for sample in report["samples"]]
    labels = list(samples[0].rss_mib) if samples else []
    report["series"] = series(samples, dict.fromkeys(labels, 0), report["loaded_s"], rss_growth)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    report = rejudge(args.rejudge, args.rss_growth) if args.rejudge else soak(args)
    args.minutes, args.rate = report["args"]["minutes"], report["args"]["rate"]
    passed, problems = verdict(report)
    report["passed"], report["problems"] = passed, problems
    lost = report["lost"]
    print(f"\n## Soak: {args.minutes:g} min at {args.rate:g} events/s\n")
    print(table(report))
    print(
        f"\nsent {report['sent']} events, answers {report['statuses']}, "
        f"latency {report['latency_ms']} ms, sender late by at most {report['sender_late_max_s']} s"
    )
    print(
        f"drained {report['drain_s']} s after the load; commands done {lost['done_commands']}, "
        f"dead {lost['dead_commands']}, open {lost['open_commands']}; accepted but not "
        f"recorded {lost['accepted_not_recorded']}; contacts as modelled "
        f"{lost['contacts_correct']}/{lost['contacts_expected']}"
    )
    print("\nverdict: " + ("PASS (no growth beyond noise, nothing lost)" if passed else "FAIL"))
    for problem in problems:
        print(f"  - {problem}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
        say(f"report in {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

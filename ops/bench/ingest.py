"""Ingest speed: signed events per second the receiver accepts under gunicorn, against a
naive Flask route that only calls ``task.delay(payload)``; then a worker's CPU per command.

Two servers run side by side under gunicorn, each in the shape that suits it:
``--workers`` x ``--threads`` (``contactsync web``'s defaults: 2 processes per CPU, at
most 8, of 8 threads; its requests wait on the ledger's commit) and ``--naive-workers`` x
``--naive-threads`` (2 x 4: the naive route's best on this 2-CPU machine, where it slows
with more, docs/benchmarks.md): ``contactsync web`` on a fresh PostgreSQL database and a
Redis database,
with a ``contactsync relay`` process publishing what it records (the work a worker's relay
does, measured apart), and :mod:`ops.bench.naive_app` on another Redis database of the
same ``redis-server``. No Celery worker runs: messages accumulate in the broker, and only
ingest is measured.

Load comes from ``wrk`` (a separate process, ``--connections`` keep-alive connections)
with a Lua script that sends pre-signed requests read from a file: every request is a
distinct ``contact.upsert`` event (its own ``id`` and ``webhook-id``, signed moments before
its phase starts, well inside the five-minute window), for ``--contacts`` distinct
contacts, so later events of a contact take the existing-contact path. The naive route is
sent the same bytes (it ignores the headers). Phases alternate, naive then ours, for
``--rounds`` rounds of ``--seconds`` each after a warm-up of each; after a phase of ours
the benchmark waits until the broker holds a message for every event in the ledger (the
*publish lag*), so that publishing does not spill into the next phase.
``--before REVISION`` adds a third server, between the two: the product as it was at that
git revision (a git worktree, started from there so that its packages shadow ours; its own
database and Redis database; with its relay if it has one). ``--relay-apart`` adds phases
of ours with its relay stopped (SIGSTOP) while the load runs, publishing after it: the
receiver alone on the machine, as when relays run in workers on other machines.
Ours runs in ``contactsync web``'s own worker class (gthread serving a prompt kept-alive
connection's next request in the same thread, :mod:`webhooks.server`), the naive route in
gthread (``--naive-worker-class`` to run it in ours).
``--think-ms N`` has each connection wait N ms before its next request (wrk's ``delay``),
as senders across a network do; wrk's latency still times the request alone.

Per phase: events/s (2xx answers ÷ duration), p50/p90/p99/max latency as wrk measures it
(closed loop: each connection sends its next request when the answer came), errors
(non-2xx answers, socket errors and timeouts), and CPU milliseconds per event of the
gunicorn processes, of ours' PostgreSQL backends, of ``redis-server`` and of the relay;
and the whole machine's busy CPU per event and idle share while the load ran.

``--worker-cost K`` then measures one ``contactsync worker`` process (threads pool) on a
``contactsync sandbox`` with no latency and a limit above the load: CPU time of the worker
process per applied command, idle CPU subtracted, over K ``contact.upsert`` commands of new
contacts, then K more of the same contacts, recorded while the clock runs and published by
the worker's own relay (its CPU counts).
``--profile`` also samples ours (an extra phase) and the worker with ``py-spy --gil``.

    python -m ops.bench.ingest [--workers W --threads 8] [--naive-workers 2 --naive-threads 4]
                               [--connections 16] [--think-ms 0]
                               [--seconds 15 --rounds 2] [--before REVISION]
                               [--relay-apart] [--profile]
                               [--worker-cost 2000] [--json out.json]

Needs PostgreSQL (``CONTACTSYNC_BENCH_PG``, default postgresql://postgres@127.0.0.1:5432/
postgres), ``redis-server`` and ``wrk`` (``apt-get install wrk``); ``--profile`` needs
``py-spy`` in the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ops.bench.common import (
    ROOT,
    SECRET,
    Database,
    MachineCpu,
    Processes,
    SandboxProcess,
    cpu_s,
    flush_redis,
    load,
    machine,
    private_redis,
    say,
    throwaway_postgres,
)
from webhooks.cli import WEB_WORKER_CLASS, default_web_workers
from webhooks.signing import WebhookSecret, sign

CHANNEL = "main"
SOURCE = "bench"
WORKER_LIMIT = (100, 0.2)
"""The channel's limit for the worker cost: 500 calls/s, a schedule of 100 starts."""

WRK_SCRIPT = r"""
-- Sends the pre-signed requests of a file (id TAB timestamp TAB signature TAB body), each
-- wrk thread its share; counts answers by status; prints one JSON line when done.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local nthreads = tonumber(args[2])
  statuses = {}
  wrapped = 0
  reqs = {}
  local k = 0
  for line in io.lines(args[1]) do
    if k % nthreads == tid then
      local id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = {["Content-Type"] = "application/json", ["webhook-id"] = id,
                       ["webhook-timestamp"] = ts, ["webhook-signature"] = sig}
      reqs[#reqs + 1] = wrk.format("POST", nil, headers, body)
    end
    k = k + 1
  end
  idx = 0
  local think = tonumber(args[3]) or 0
  if think > 0 then  -- each connection waits this long before its next request
    delay = function() return think end
  end
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx = 1
    wrapped = wrapped + 1
  end
  return reqs[idx]
end

function response(status, headers, body)
  local s = tostring(status)
  statuses[s] = (statuses[s] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  local wraps = 0
  for _, thread in ipairs(threads) do
    for s, n in pairs(thread:get("statuses")) do
      total[s] = (total[s] or 0) + n
    end
    wraps = wraps + thread:get("wrapped")
  end
  local parts = {}
  for s, n in pairs(total) do
    parts[#parts + 1] = string.format('"%s": %d', s, n)
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"duration_us": %d, "requests": %d, "statuses": {%s}, "wrapped": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.duration, summary.requests, table.concat(parts, ", "), wraps,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


@dataclass
class Phase:
    """One load phase against one server."""

    server: str
    round: int
    seconds: float
    events_s: float
    """2xx answers per second."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    answers: dict[str, int]
    errors: int
    """Non-2xx answers, socket errors and timeouts."""
    wrapped: int
    """Times a wrk thread ran out of pre-signed requests and started over (duplicates)."""
    cpu_server_ms: float
    """CPU of the gunicorn processes per 2xx answer, ms."""
    cpu_db_ms: float | None
    """CPU of ours' PostgreSQL backends per 2xx answer, ms (ours only)."""
    cpu_redis_ms: float | None
    """CPU of ``redis-server`` per 2xx answer, ms (``None`` when it is shared)."""
    cpu_relay_ms: float | None
    """CPU of the ``contactsync relay`` process per 2xx answer, ms (servers with one)."""
    publish_lag_s: float | None
    """Phase end → every accepted event's message in the broker (contactsync servers)."""
    group_mean: float | None = None
    """Events per write of the group intake (its histogram on ``/metrics``; revisions that
    have one)."""
    load: list[float] = field(default_factory=list)
    """The 1, 5 and 15 minute load averages when the phase started."""
    machine_ms: float | None = None
    """The whole machine's busy CPU per 2xx answer while the load ran, ms: every process
    (the load generator, the database's own writers, the kernel) included."""
    idle_pct: float | None = None
    """Share of the machine's CPU time left idle while the load ran (all CPUs)."""
    iowait_pct: float | None = None
    """The part of that idle time with disk I/O outstanding."""
    steal_pct: float | None = None
    """Share of the machine's CPU time the hypervisor gave to other guests (noise)."""


@dataclass
class WorkerCost:
    """One worker process applying commands against a sandbox with no latency."""

    contacts: str
    """``new`` (find, create, add tags) or ``known`` (the same contacts again)."""
    commands: int
    seconds: float
    """First command published → last one done."""
    commands_s: float
    cpu_s: float
    idle_cpu_s: float
    """The worker's CPU over the same time when idle (polling, heartbeat), subtracted."""
    cpu_ms_per_command: float
    db_cpu_ms_per_command: float
    """CPU of the ledger database's backends per command (this benchmark's polling too)."""
    api_calls: int
    concurrency: int


# -- processes and their CPU -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """Direct children of a process (gunicorn's workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def wait_http(url: str, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Until ``url`` answers a GET (whatever the status but a 5xx): a gunicorn worker is up."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start; see {log}") from None
        time.sleep(0.1)


class Server:
    """A gunicorn server under load: its URL, the processes whose CPU is its cost, and for
    a contactsync server its ledger, its broker and the relay that publishes for it."""

    def __init__(
        self,
        name: str,
        url: str,
        process: subprocess.Popen[bytes],
        broker: redis.Redis,
        database: Database | None = None,
        relay: subprocess.Popen[bytes] | None = None,
        *,
        relay_apart: bool = False,
        metrics_url: str | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.metrics_url = metrics_url
        self.process = process
        self.broker = broker
        self.database = database
        self.relay = relay
        self.relay_apart = relay_apart
        """The relay is stopped (SIGSTOP) while the load runs and publishes after it: the
        receiver alone on the machine, as when relays run in workers on other machines."""

    def apart(self, name: str) -> Server:
        """This server, measured with its relay apart."""
        return Server(
            *(name, self.url, self.process, self.broker, self.database, self.relay),
            relay_apart=True,
            metrics_url=self.metrics_url,
        )

    def pids(self) -> list[int]:
        return [self.process.pid, *children(self.process.pid)]

    def relay_pids(self) -> list[int]:
        return [self.relay.pid] if self.relay is not None else []


GROUP_SERIES = "contactsync_ledger_record_group_size"


def group_writes(server: Server) -> tuple[float, float] | None:
    """The group intake's writes and the events they recorded so far, from the server's
    ``/metrics``; ``None`` when it has no such series (the naive route, older revisions)."""
    if server.metrics_url is None:
        return None
    text = requests.get(server.metrics_url, timeout=10).text
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == GROUP_SERIES
        for sample in family.samples
    }
    if f"{GROUP_SERIES}_count" not in found:
        return None
    return found[f"{GROUP_SERIES}_count"], found[f"{GROUP_SERIES}_sum"]


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def queued(client: redis.Redis) -> int:
    """Messages waiting in a Redis database's Celery queues (kombu's list keys)."""
    total = 0
    for key in client.scan_iter(count=1000):
        if client.type(key) == b"list":
            total += int(client.llen(key))
    return total


# -- load -------------------------------------------------------------------------------------


def write_requests(path: Path, count: int, contacts: int, run: str) -> None:
    """``count`` distinct signed ``contact.upsert`` events, one request a line."""
    secret = WebhookSecret.parse(SECRET)
    timestamp = int(time.time())
    with path.open("w") as out:
        for i in range(count):
            n = i % contacts
            body = json.dumps(
                {
                    "id": f"{run}-{i}",
                    "type": "contact.upsert",
                    "channel": CHANNEL,
                    "match": {"email": f"user{n}@example.com"},
                    "fields": {"firstName": "Ann", "lastName": f"Lee {n}", "customerid": str(n)},
                    "tags": ["vip", "newsletter"],
                },
                separators=(",", ":"),
            )
            msg_id = f"msg_{run}_{i}"
            signature = sign(secret, msg_id, timestamp, body.encode())
            out.write(f"{msg_id}\t{timestamp}\t{signature}\t{body}\n")


def wrk(
    url: str, script: Path, requests_file: Path, args: argparse.Namespace, seconds: float
) -> Any:
    command = [
        shutil.which("wrk") or "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(requests_file),
        str(args.wrk_threads),
        str(args.think_ms),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")


@contextmanager
def profiled(pids: Sequence[int], label: str, folder: Path) -> Iterator[list[Path]]:
    """py-spy on each of ``pids`` while the block runs; only samples of a thread holding
    the GIL (``--gil``): where the Python CPU goes, not the waits."""
    spy = Path(sys.executable).with_name("py-spy")
    outputs: list[Path] = []
    spies = []
    for pid in pids:
        output = folder / f"profile-{label}-{pid}.txt"
        outputs.append(output)
        spies.append(
            subprocess.Popen(
                [
                    *(str(spy), "record", "--pid", str(pid), "--rate", "200"),
                    *("--format", "raw", "--threads", "--gil", "--output", str(output)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    time.sleep(0.5)  # attached
    try:
        yield outputs
    finally:
        for process in spies:
            process.send_signal(signal.SIGINT)  # py-spy writes its file and stops
        for process in spies:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


RECEIVER_PARTS = (
    ("publisher thread (Celery send_task)", "BackgroundPublisher._run"),
    ("relay (outbox → task messages)", "Relay.run"),
    ("ledger: pool checkout (with its ping)", "Engine.connect"),
    ("ledger: the group intake (coordination, psycopg, the statement)", "Ledger.record"),
    ("signature + parsing", "Receiver._generic"),
    ("log line, metrics", "Receiver._record"),
    ("the JSON answer", "_answer"),
    ("rest of the view", "Receiver._handle"),
    ("Flask", "Flask.wsgi_app"),
    ("gunicorn: request threads (HTTP parsing, sockets)", "ThreadWorker.handle"),
    ("gunicorn: main loop (accept, poll, hand over)", "ThreadWorker.run"),
)
"""Buckets of the receiver's GIL samples, by the first frame found in this order."""

WORKER_PARTS = (
    ("API calls (requests)", "Session.request"),
    ("rate limiter (reserve/confirm)", "Pacer.__call__"),
    ("ledger: claim", "Ledger.claim"),
    ("ledger: followers, later_done", "Ledger.claim_followers"),
    ("ledger: followers, later_done", "Ledger.later_done"),
    ("ledger: complete, remember", "Ledger.complete"),
    ("ledger: other", "Ledger."),
    ("apply (client, payloads)", "apply"),
    ("task run (other)", "run_command"),
    ("Celery, kombu", "celery/"),
)


def summarise_profile(
    paths: Sequence[Path], parts: Sequence[tuple[str, str]] = (), top: int = 25
) -> list[str]:
    """Where the samples went: by part (a sample counts for the first of ``parts`` whose
    marker is in its stack: a function's name, a name prefix ending in ``.``, or a path
    piece holding ``/``), then by function, inclusive and self."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    bucket: Counter[str] = Counter()
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            seen = set()
            for frame in frames:
                name = frame.split(" (", 1)[0] + " " + _where(frame)
                if name not in seen:
                    inclusive[name] += count
                    seen.add(name)
            own[frames[-1].split(" (", 1)[0] + " " + _where(frames[-1])] += count
            names = [frame.split(" (", 1)[0] for frame in frames]
            for label, marker in parts:
                if (
                    marker in names
                    or (marker.endswith(".") and any(n.startswith(marker) for n in names))
                    or ("/" in marker and marker in stack)
                ):
                    bucket[label] += count
                    break
            else:
                bucket["other"] += count
    if not total:
        return ["no samples"]
    lines = [f"samples (GIL held): {total}"]
    if parts:
        lines += ["by part:"]
        lines += [f"  {100 * n / total:5.1f}%  {label}" for label, n in bucket.most_common()]
    lines += ["inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["self:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return lines


def _where(frame: str) -> str:
    inside = frame.split(" (", 1)[1].rstrip(")") if " (" in frame else ""
    path = inside.rsplit(":", 1)[0]
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else ""


# -- the ingest comparison ------------------------------------------------------------------------


def write_config(
    path: Path, api_url: str, rate: tuple[int, float] = (200, 60.0), margin_s: float = 0.25
) -> Path:
    """The product's config: one channel, one generic source."""
    document = {
        "contacts_api": {"base_url": api_url},
        "channels": {
            CHANNEL: {
                "token": "sandbox-main-token",
                "platform": "whatsapp",
                "rate_limit": {"calls": rate[0], "period_s": rate[1], "margin_s": margin_s},
            }
        },
        "sources": {SOURCE: {"kind": "generic", "secret": SECRET, "channel": CHANNEL}},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def product_env(folder: Path, config: Path, database_url: str, broker_url: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CONTACTSYNC_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        CONTACTSYNC_CONFIG=str(config),
        CONTACTSYNC_DATA_DIR=str(folder / "data"),
        CONTACTSYNC_BROKER_URL=broker_url,
        CONTACTSYNC_DATABASE_URL=database_url,
        PYTHONUNBUFFERED="1",
    )
    return env


def gunicorn(
    args: argparse.Namespace,
    folder: Path,
    processes: Processes,
    label: str,
    app: str,
    env: dict[str, str],
) -> tuple[subprocess.Popen[bytes], int]:
    """``app`` under gunicorn with the benchmark's settings, on a free port."""
    port = free_port()
    with (folder / f"{label}.log").open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--worker-class",
                args.naive_worker_class,
                "--workers",
                str(args.naive_workers),
                "--threads",
                str(args.naive_threads),
                "--bind",
                f"127.0.0.1:{port}",
                "--graceful-timeout",
                "10",
                "--no-control-socket",
                app,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    processes.running[label] = process
    return process, port


def start_servers(
    args: argparse.Namespace,
    folder: Path,
    stack: ExitStack,
    redis_base: str,
) -> list[Server]:
    """naive, (before,) ours: each its own gunicorn with the same workers and threads; each
    contactsync server on its own PostgreSQL database and Redis database, with its relay."""
    ours_db, naive_db, before_db = args.redis_dbs
    config = write_config(folder / "contactsync.yaml", "http://127.0.0.1:9/api/v1")
    ours = contactsync_server("ours", args, folder, stack, config, f"{redis_base}/{ours_db}")
    servers = [ours, ours.apart("ours-apart")] if args.relay_apart else [ours]
    if args.before:
        tree = worktree(args.before, folder / f"before-{args.before}", stack)
        before = contactsync_server(
            "before", args, folder, stack, config, f"{redis_base}/{before_db}", tree
        )
        servers.insert(0, before)
    naive_broker = f"{redis_base}/{naive_db}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
    env["NAIVE_BROKER_URL"] = naive_broker
    processes = Processes(folder, env)
    stack.callback(processes.stop)
    process, port = gunicorn(args, folder, processes, "naive", "ops.bench.naive_app:app", env)
    wait_http(f"http://127.0.0.1:{port}/events", process, "naive", folder / "naive.log")
    broker = stack.enter_context(closing(redis.Redis.from_url(naive_broker)))
    servers.insert(0, Server("naive", f"http://127.0.0.1:{port}/events", process, broker))
    return servers


def contactsync_server(
    name: str,
    args: argparse.Namespace,
    folder: Path,
    stack: ExitStack,
    config: Path,
    broker_url: str,
    tree: Path = ROOT,
) -> Server:
    """``contactsync web`` from the source tree ``tree`` on a fresh database and
    ``broker_url`` (flushed), and ``contactsync relay`` when that tree has one."""
    held = flush_redis(broker_url)
    if held:
        say(f"note: {broker_url} held {held} keys; flushed")
    stack.callback(flush_redis, broker_url)
    database_url = stack.enter_context(throwaway_postgres(f"contactsync_ingest_{name}"))
    data = folder / f"data-{name}"
    env = product_env(data, config, database_url, broker_url)
    processes = Processes(folder, env, cwd=tree)
    stack.callback(processes.stop)
    port = free_port()
    web = processes.start(
        name,
        *("web", "--port", str(port), "--workers", str(args.workers)),
        *("--threads", str(args.threads)),
    )
    log = folder / f"{name}.log"
    wait_http(f"http://127.0.0.1:{port}/healthz", web, f"{name}: contactsync web", log)
    relay = None
    if "def relay(" in (tree / "webhooks" / "cli.py").read_text():
        relay = processes.start(f"{name}-relay", "relay")
    database = Database(
        os.environ.get("CONTACTSYNC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        database_url,
    )
    stack.callback(database.close)
    broker = stack.enter_context(closing(redis.Redis.from_url(broker_url)))
    url = f"http://127.0.0.1:{port}/webhooks/{SOURCE}"
    metrics = f"http://127.0.0.1:{port}/metrics"
    return Server(name, url, web, broker, database, relay, metrics_url=metrics)


def worktree(revision: str, path: Path, stack: ExitStack) -> Path:
    """The repository at ``revision``, checked out at ``path`` (removed afterwards): its
    packages shadow the installed ones when a process starts there (``python -m``)."""
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(path), revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    stack.callback(
        subprocess.run,
        ["git", "worktree", "remove", "--force", str(path)],
        cwd=ROOT,
        check=False,
        capture_output=True,
    )
    return path


def describe(phase: Phase) -> str:
    extra = [
        f"db {phase.cpu_db_ms:.2f} ms" if phase.cpu_db_ms is not None else "",
        f"redis {phase.cpu_redis_ms:.2f} ms" if phase.cpu_redis_ms is not None else "",
        f"relay {phase.cpu_relay_ms:.2f} ms" if phase.cpu_relay_ms is not None else "",
        f"publish lag {phase.publish_lag_s:.2f} s" if phase.publish_lag_s is not None else "",
        f"{phase.group_mean:.2f} events/commit" if phase.group_mean is not None else "",
        f"machine {phase.machine_ms:.2f} ms" if phase.machine_ms is not None else "",
        f"idle {phase.idle_pct:.0f} % (iowait {phase.iowait_pct:.0f} %)"
        if phase.idle_pct is not None and phase.iowait_pct is not None
        else "",
        f"steal {phase.steal_pct:.0f} %" if phase.steal_pct is not None else "",
    ]
    return (
        f"{phase.events_s:7.1f} events/s, p50 {phase.p50_ms:.1f} p99 {phase.p99_ms:.1f} ms, "
        f"errors {phase.errors}, CPU/event: server {phase.cpu_server_ms:.2f} ms"
        + "".join(f", {part}" for part in extra if part)
    )


def run_phase(
    server: Server,
    number: int,
    args: argparse.Namespace,
    folder: Path,
    script: Path,
    broker_redis_cpu: bool,
    seconds: float,
) -> Phase:
    run = f"{server.name}{number}-{uuid.uuid4().hex[:6]}"
    requests_file = folder / f"requests-{run}.tsv"
    write_requests(requests_file, args.requests_per_phase, args.contacts, run)
    database = server.database
    groups = group_writes(server)
    db_pids = database.backends() if database else []
    server_cpu, db_cpu = cpu_s(server.pids()), cpu_s(db_pids)
    relay_cpu = cpu_s(server.relay_pids())
    redis_cpu = redis_cpu_s(server.broker)
    load_now = load()
    paused = server.relay if server.relay_apart else None
    if paused is not None:
        paused.send_signal(signal.SIGSTOP)
    machine = MachineCpu.now()
    try:
        result = wrk(server.url, script, requests_file, args, seconds)
        machine = MachineCpu.now() - machine
    finally:
        if paused is not None:
            paused.send_signal(signal.SIGCONT)
    ended = time.monotonic()
    lag = None
    if database is not None:  # contactsync: wait until every recorded event is published
        # (the ledger, not wrk, says how many: wrk does not count the answers in flight
        # when it stops, but the server still records those events)
        time.sleep(0.05)
        recorded = database.events()
        while queued(server.broker) < recorded and time.monotonic() - ended < 60:
            time.sleep(0.05)
        lag = time.monotonic() - ended
    server_cpu = cpu_s(server.pids()) - server_cpu
    db_cpu = cpu_s(database.backends()) - db_cpu if database else 0.0
    relay_cpu = cpu_s(server.relay_pids()) - relay_cpu
    redis_cpu = redis_cpu_s(server.broker) - redis_cpu
    group_mean = None
    if groups is not None and (after := group_writes(server)) is not None and after[0] > groups[0]:
        group_mean = round((after[1] - groups[1]) / (after[0] - groups[0]), 2)
    requests_file.unlink()
    answers = {str(k): int(v) for k, v in sorted(result["statuses"].items())}
    ok = sum(n for status, n in answers.items() if status.startswith("2"))
    errors = sum(n for status, n in answers.items() if not status.startswith("2"))
    errors += sum(v for k, v in result["errors"].items() if k != "status")
    duration = result["duration_us"] / 1e6
    per = max(ok, 1)
    return Phase(
        server=server.name,
        round=number,
        seconds=round(duration, 2),
        events_s=round(ok / duration, 1),
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        answers=answers,
        errors=errors,
        wrapped=int(result["wrapped"]),
        cpu_server_ms=round(1000 * server_cpu / per, 3),
        cpu_db_ms=round(1000 * db_cpu / per, 3) if database else None,
        cpu_redis_ms=round(1000 * redis_cpu / per, 3) if broker_redis_cpu else None,
        cpu_relay_ms=round(1000 * relay_cpu / per, 3) if server.relay else None,
        publish_lag_s=round(lag, 2) if lag is not None else None,
        group_mean=group_mean,
        load=load_now,
        machine_ms=round(1000 * machine.busy / per, 3),
        idle_pct=machine.share(machine.idle),
        iowait_pct=machine.share(machine.iowait),
        steal_pct=machine.share(machine.steal),
    )


def ingest(
    args: argparse.Namespace, folder: Path, redis_base: str, own_redis: bool
) -> tuple[list[Phase], list[str]]:
    """The alternating comparison (and the profile, with ``--profile``)."""
    script = folder / "post.lua"
    script.write_text(WRK_SCRIPT)
    phases: list[Phase] = []
    profile: list[str] = []
    with ExitStack() as stack:
        servers = start_servers(args, folder, stack, redis_base)
        say(
            f"servers up ({', '.join(s.name for s in servers)}): {args.workers} workers x "
            f"{args.threads} threads each; warming up"
        )
        accepted: Counter[int] = Counter()  # by database

        def phase(server: Server, number: int, seconds: float) -> Phase:
            result = run_phase(server, number, args, folder, script, own_redis, seconds)
            accepted[id(server.database)] += sum(
                n for s, n in result.answers.items() if s[0] == "2"
            )
            return result

        for server in servers:
            warm = phase(server, 0, args.warmup)
            say(f"  warm-up {server.name}: {warm.events_s:.0f} events/s")
        for number in range(1, args.rounds + 1):
            for server in servers:
                result = phase(server, number, args.seconds)
                phases.append(result)
                say(f"  round {number} {server.name:6}: {describe(result)}")
        checked = set()
        for server in servers:
            if server.database is None or id(server.database) in checked:
                continue
            checked.add(id(server.database))
            recorded, took = server.database.events(), accepted[id(server.database)]
            phases_run = sum(1 for other in servers if other.database is server.database)
            slack = args.connections * (args.rounds + 1) * phases_run
            if not took <= recorded <= took + slack:
                raise RuntimeError(
                    f"{server.name}: {took} events accepted but {recorded} in the ledger"
                )
            say(
                f"  {server.name}: the ledger holds the {took} accepted events (and "
                f"{recorded - took} whose answers were in flight when wrk stopped)"
            )
        if args.profile:
            ours = next(server for server in servers if server.name == "ours")
            say(f"  profiling ours for {args.seconds:g} s (py-spy, not in the table)")
            pids = [*children(ours.process.pid), *ours.relay_pids()]
            with profiled(pids, "ours", folder) as outputs:
                phase(ours, 99, args.seconds)
            profile = summarise_profile(outputs, RECEIVER_PARTS)
            for line in profile:
                say(line)
    return phases, profile


# -- worker cost ----------------------------------------------------------------------------------


def worker_events(count: int, run: str) -> list[list[Any]]:
    """``count`` ``contact.upsert`` events for contacts worker0..: batches of 100 NewEvents."""
    from webhooks.sources.generic import parse_events
    from worker.ledger.store import NewEvent

    batches = []
    for start in range(0, count, 100):
        body = json.dumps(
            [
                {
                    "id": f"{run}-{i}",
                    "type": "contact.upsert",
                    "channel": CHANNEL,
                    "match": {"email": f"worker{i}@example.com"},
                    "fields": {"firstName": "Ann", "customerid": f"{run}-{i}"},
                    "tags": ["vip", run],
                }
                for i in range(start, min(start + 100, count))
            ]
        ).encode()
        inbound = parse_events(
            body,
            webhook_id=f"{run}-{start}",
            source=SOURCE,
            default_channel=CHANNEL,
            channels={CHANNEL: None},
        )
        batches.append([NewEvent(e.key, e.type, e.raw, e.commands) for e in inbound])
    return batches


def worker_cost(args: argparse.Namespace, folder: Path, redis_base: str) -> list[WorkerCost]:
    """CPU per command applied by one ``contactsync worker`` process (idle CPU subtracted):
    ``--worker-cost`` upserts of new contacts, then as many again of the same contacts."""
    from sqlalchemy import func, select

    from worker.config import Settings, load_config
    from worker.ledger.schema import workers
    from worker.runtime import Runtime

    broker = f"{redis_base}/{args.redis_dbs[2]}"
    flush_redis(broker)
    sandbox = SandboxProcess((1_000_000, 60.0), folder / "sandbox.log")  # never binds
    results = []
    try:
        with throwaway_postgres("contactsync_ingest_worker") as database_url:
            # The limiter keeps a schedule of up to ``calls`` starts, read and written at
            # each reservation: a limit of a realistic size that does not bind here.
            config = write_config(
                folder / "worker.yaml", sandbox.api_url, rate=WORKER_LIMIT, margin_s=0.0
            )
            settings = Settings(
                config=config,
                data_dir=folder / "worker-data",
                broker_url=broker,
                database_url=database_url,
            )
            runtime = Runtime(settings, load_config(config))
            processes = Processes(folder, product_env(folder, config, database_url, broker))
            database = Database(
                os.environ.get(
                    "CONTACTSYNC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"
                ),
                database_url,
            )
            try:
                concurrency = (
                    ["--concurrency", str(args.worker_concurrency)]
                    if args.worker_concurrency
                    else []
                )
                process = processes.start("worker", "worker", *concurrency)
                deadline = time.monotonic() + 60
                with runtime.ledger.engine.connect() as connection:
                    while not connection.execute(
                        select(func.count()).select_from(workers)
                    ).scalar():
                        if process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"the worker did not start; see {folder}")
                        time.sleep(0.2)
                        connection.rollback()
                time.sleep(2)  # let start-up finish
                pids = [process.pid, *children(process.pid)]
                idle_start, idle_at = cpu_s(pids), time.monotonic()
                time.sleep(5)
                idle_rate = (cpu_s(pids) - idle_start) / (time.monotonic() - idle_at)
                run = uuid.uuid4().hex[:6]
                for number, contacts in enumerate(("new", "known")):
                    batches = worker_events(args.worker_cost, f"w{run}{number}")
                    sandbox.reset()
                    target = (number + 1) * args.worker_cost
                    with ExitStack() as spying:
                        if args.profile:
                            label = f"worker-{contacts}"
                            outputs = spying.enter_context(profiled(pids, label, folder))
                        db_pids = database.backends()
                        before, db_before = cpu_s(pids), cpu_s(db_pids)
                        began = time.monotonic()
                        # recorded as the receiver records: the worker's relay publishes them
                        for batch in batches:
                            runtime.ledger.record(SOURCE, batch)
                        while True:
                            counts = runtime.ledger.counts()
                            if counts["done"] + counts["dead"] >= target:
                                break
                            if process.poll() is not None or time.monotonic() - began > 900:
                                raise RuntimeError(f"the worker stopped or stalled: {counts}")
                            time.sleep(0.1)
                        elapsed = time.monotonic() - began
                        used = cpu_s(pids) - before
                        db_used = cpu_s(database.backends()) - db_before
                    if counts["dead"]:
                        raise RuntimeError(f"{counts['dead']} dead letters; see {folder}")
                    if args.profile:
                        say(f"worker, {contacts} contacts:")
                        for line in summarise_profile(outputs, WORKER_PARTS, top=40):
                            say(line)
                    calls = int(sandbox.log()["channels"][CHANNEL]["accepted"])
                    idle = idle_rate * elapsed
                    results.append(
                        WorkerCost(
                            contacts=contacts,
                            commands=args.worker_cost,
                            seconds=round(elapsed, 2),
                            commands_s=round(args.worker_cost / elapsed, 1),
                            cpu_s=round(used, 2),
                            idle_cpu_s=round(idle, 2),
                            cpu_ms_per_command=round(1000 * (used - idle) / args.worker_cost, 3),
                            db_cpu_ms_per_command=round(1000 * db_used / args.worker_cost, 3),
                            api_calls=calls,
                            concurrency=args.worker_concurrency,
                        )
                    )
                    say(f"  {contacts} contacts: {describe_cost(results[-1])}")
            finally:
                processes.stop()
                database.close()
                runtime.ledger.engine.dispose()
                runtime.celery.close()
    finally:
        sandbox.stop()
        flush_redis(broker)
    return results


def describe_cost(cost: WorkerCost) -> str:
    return (
        f"{cost.commands} upserts ({cost.api_calls} API calls) in {cost.seconds:.1f} s "
        f"({cost.commands_s:.0f}/s); worker CPU {cost.cpu_s:.2f} s - idle {cost.idle_cpu_s:.2f} s"
        f" = {cost.cpu_ms_per_command:.2f} ms per command; ledger database "
        f"{cost.db_cpu_ms_per_command:.2f} ms per command"
    )


# -- report ---------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def table(
    info: dict[str, Any],
    args: argparse.Namespace,
    phases: Sequence[Phase],
    costs: Sequence[WorkerCost],
) -> str:
    lines = [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"{info['system']}, load {' '.join(str(x) for x in info['loadavg'])}; "
        f"revision {info['revision']}",
        f"gunicorn: ours {args.workers} workers x {args.threads} threads ({WEB_WORKER_CLASS}),"
        f" naive {args.naive_workers} x {args.naive_threads} ({args.naive_worker_class}); wrk "
        f"{args.connections} connections ({args.wrk_threads} threads), {args.seconds:g} s "
        f"phases, {args.rounds} rounds",
        "",
    ]
    if phases:
        lines += [
            "| round | server | events/s | p50 ms | p90 ms | p99 ms | max ms | errors "
            "| CPU ms/event: server | db | redis | relay | machine | idle % | steal % "
            "| publish lag s | events/commit | load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def opt(value: float | None, digits: int = 2) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        for p in phases:
            lines.append(
                f"| {p.round} | {p.server} | {p.events_s:.0f} | {p.p50_ms:.1f} | {p.p90_ms:.1f} "
                f"| {p.p99_ms:.1f} | {p.max_ms:.0f} | {p.errors} | {p.cpu_server_ms:.2f} "
                f"| {opt(p.cpu_db_ms)} | {opt(p.cpu_redis_ms)} | {opt(p.cpu_relay_ms)} "
                f"| {opt(p.machine_ms)} | {opt(p.idle_pct, 0)} | {opt(p.steal_pct, 0)} "
                f"| {opt(p.publish_lag_s)} | {opt(p.group_mean)} "
                f"| {opt(p.load[0] if p.load else None, 1)} |"
            )
        names = list(dict.fromkeys(p.server for p in phases))
        naive = median([p.events_s for p in phases if p.server == "naive"])
        naive_in = {p.round: p.events_s for p in phases if p.server == "naive"}
        lines += [
            "",
            "medians over the rounds (/ naive: of the medians; per round: the median and the "
            "range of each round's ratio, which the machine's drift between rounds does not "
            "move):",
            "",
            "| server | events/s | / naive | / naive, per round | p50 ms | p90 ms | p99 ms "
            "| errors | CPU ms/event: server | db | relay | machine |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in names:
            mine = [p for p in phases if p.server == name]

            def mid(attribute: str, group: Sequence[Phase] = mine) -> float:
                return median([getattr(p, attribute) for p in group])

            db = [p.cpu_db_ms for p in mine if p.cpu_db_ms is not None]
            relay = [p.cpu_relay_ms for p in mine if p.cpu_relay_ms is not None]
            whole = [p.machine_ms for p in mine if p.machine_ms is not None]
            ratios = [p.events_s / naive_in[p.round] for p in mine if naive_in.get(p.round)]
            per_round = (
                f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"
            )
            lines.append(
                f"| {name} | {mid('events_s'):.0f} | {mid('events_s') / naive:.2f} "
                f"| {per_round} | {mid('p50_ms'):.1f} | {mid('p90_ms'):.1f} | {mid('p99_ms'):.1f} "
                f"| {sum(p.errors for p in mine)} | {mid('cpu_server_ms'):.2f} "
                f"| {opt(median(db) if db else None)} | {opt(median(relay) if relay else None)} "
                f"| {opt(median(whole) if whole else None)} |"
            )
    if costs:
        threads = args.worker_concurrency or "default"
        lines += ["", f"worker (one process, {threads} threads, sandbox without latency):"]
        lines += [f"  {cost.contacts} contacts: {describe_cost(cost)}" for cost in costs]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.ingest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_web_workers(),
        help=f"gunicorn processes ({default_web_workers()}: contactsync web's default here)",
    )
    parser.add_argument(
        "--threads", type=int, default=8, help="threads per process (8, contactsync web's default)"
    )
    parser.add_argument(
        "--naive-workers",
        type=int,
        default=2,
        help="the naive route's processes (2: its best on 2 CPUs, docs/benchmarks.md)",
    )
    parser.add_argument(
        "--naive-threads",
        type=int,
        default=4,
        help="the naive route's threads (4: its best on 2 CPUs, docs/benchmarks.md)",
    )
    parser.add_argument(
        "--naive-worker-class",
        default="gthread",
        help=f"the naive route's gunicorn worker class (gthread; {WEB_WORKER_CLASS} to see what"
        " ours' worker class is worth to it)",
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument(
        "--think-ms",
        type=int,
        default=0,
        help="each connection waits this long before its next request (0)",
    )
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase (15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up per server (3)")
    parser.add_argument("--rounds", type=int, default=2, help="naive+ours rounds (2)")
    parser.add_argument("--contacts", type=int, default=20000, help="distinct contacts (20000)")
    parser.add_argument(
        "--requests-per-phase",
        type=int,
        default=0,
        help="pre-signed requests per phase (default: 6000 per second of the phase)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        help="a Redis server URL without a db number, e.g. redis://127.0.0.1:6379, whose "
        "databases 11, 12, 13 are used (flushed before and after); default: a "
        "redis-server of the benchmark's own",
    )
    parser.add_argument(
        "--before",
        default=None,
        metavar="REVISION",
        help="also run the product as it was at this git revision (a git worktree, its own "
        "database and Redis database), to measure a change against its predecessor",
    )
    parser.add_argument(
        "--relay-apart",
        action="store_true",
        help="also measure ours with its relay stopped during the load (it publishes after)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy an extra ours phase")
    parser.add_argument(
        "--worker-cost", type=int, default=2000, help="commands for the worker cost (0: skip)"
    )
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=0,
        help="worker threads (default: contactsync worker's own default)",
    )
    parser.add_argument("--no-ingest", action="store_true", help="only the worker cost")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if not args.requests_per_phase:
        args.requests_per_phase = int(6000 * max(args.seconds, args.warmup))
    args.redis_dbs = (11, 12, 13) if args.redis else (1, 2, 3)
    if not shutil.which("wrk") and not args.no_ingest:
        parser.error("wrk is not installed (apt-get install wrk)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    folder = Path(tempfile.mkdtemp(prefix="contactsync-ingest-"))
    say(f"logs in {folder}")
    phases: list[Phase] = []
    profile: list[str] = []
    costs: list[WorkerCost] = []
    with ExitStack() as stack:
        if args.redis:
            redis_base, own = args.redis.rstrip("/"), False
        else:
            redis_base, own = stack.enter_context(private_redis(folder)).rsplit("/", 1)[0], True
        if not args.no_ingest:
            phases, profile = ingest(args, folder, redis_base, own)
        if args.worker_cost:
            say(f"worker cost: {args.worker_cost} commands")
            costs = worker_cost(args, folder, redis_base)
    print(table(info, args, phases, costs), flush=True)
    if args.json:
        document = {
            "benchmark": "ingest",
            "command": " ".join(["python -m ops.bench.ingest", *(sys.argv[1:])]),
            "machine": info,
            "settings": {
                k: v for k, v in vars(args).items() if k not in ("json",) and not callable(v)
            },
            "phases": [asdict(p) for p in phases],
            "profile": profile,
            "worker_cost": [asdict(cost) for cost in costs],
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    if args.keep or args.profile:
        say(f"logs kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

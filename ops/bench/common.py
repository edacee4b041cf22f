"""What the benchmarks share: the machine, throwaway services, the sandbox as a process,
contactsync processes, signed posts to the receiver, and progress lines on stderr."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import redis
import requests

from webhooks.signing import WebhookSecret, sign

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("CONTACTSYNC_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = os.environ.get("CONTACTSYNC_BENCH_REDIS", "redis://127.0.0.1:6379")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a benchmark's own source secret


def say(message: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "loadavg": load(),
        "revision": revision(),
    }


def revision() -> str:
    """The commit measured, and whether the product code differs from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "worker", "webhooks"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + {len(changed)} changed files" if changed else head


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine disturbs figures)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# -- services -------------------------------------------------------------------------------


@contextmanager
def throwaway_postgres(prefix: str = "contactsync_bench") -> Iterator[str]:
    """A fresh PostgreSQL database; yields its SQLAlchemy URL and drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].split("://", 1)[1]
    try:
        yield f"postgresql+psycopg://{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PrivateRedis:
    """A ``redis-server`` of the benchmark's own on a free port, without persistence;
    ``url`` has no database number.

    The shared Redis on 6379 is used by test sessions that each take a random database
    number and flush it, and its pub/sub (Celery's heartbeats) spans databases: a run on
    it can lose its queue to someone else's ``FLUSHDB``.
    """

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        self.url = f"redis://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(folder),
                "--logfile",
                str(folder / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError as error:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"no redis-server; see {folder}/redis.log") from error
                time.sleep(0.1)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def private_redis(folder: Path) -> Iterator[str]:
    """A :class:`PrivateRedis` for the block; yields the URL of its database 0."""
    server = PrivateRedis(folder)
    try:
        yield f"{server.url}/0"
    finally:
        server.stop()


def flush_redis(url: str) -> int:
    """Empty a Redis database; returns how many keys it held."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3)
    try:
        keys = int(client.dbsize())
        client.flushdb()
        return keys
    finally:
        client.close()


# -- processes ------------------------------------------------------------------------------


class Processes:
    """``contactsync`` subcommands started by a benchmark, each logging to its own file."""

    def __init__(self, folder: Path, env: dict[str, str], *, cwd: Path = ROOT) -> None:
        self.folder = folder
        self.env = env
        self.cwd = cwd
        """Where they start: another source tree there (a git worktree) shadows ours."""
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, label: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``contactsync ARGS`` (known as ``label``)."""
        with (self.folder / f"{label}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "webhooks.cli", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
        self.running[label] = process
        return process

    def exited(self) -> list[str]:
        """Labels of processes that stopped on their own."""
        return [label for label, p in self.running.items() if p.poll() is not None]

    def stop(self) -> None:
        """Stop every process started here (SIGTERM, then SIGKILL after 20 s)."""
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()


class SandboxProcess:
    """``contactsync sandbox`` on a free port, with its demo channels, driven over HTTP."""

    def __init__(self, rate: tuple[int, float], log_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONTACTSYNC_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = log_path
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhooks.cli",
                "sandbox",
                "--port",
                "0",
                "--rate",
                f"{rate[0]}/{rate[1]:g}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_path.open("ab"),
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()  # "Contacts API sandbox on URL/api/v1 - …"
        if " on " not in line:
            self.stop()
            raise RuntimeError(f"the sandbox did not start: {line!r}; see {log_path}")
        self.api_url = line.split(" on ", 1)[1].split()[0]
        self.url = self.api_url.rsplit("/api/", 1)[0]
        self.http = requests.Session()

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        """A request to ``/_sandbox/PATH``; returns the JSON answer."""
        response = self.http.request(method, f"{self.url}/_sandbox/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def reset(self, latency_ms: float = 0.0) -> None:
        """Back to the starting state: empty windows, log and contacts; each call then
        answered ``latency_ms`` later (a distant API; 0: at once)."""
        self.admin("POST", "reset")
        if latency_ms:
            self.admin("POST", "faults", json={"latency_ms": latency_ms})

    def seed(self, channel: str, count: int) -> list[str]:
        """``count`` contacts created directly (not API calls); returns their ids."""
        return [
            self.admin(
                "POST",
                f"contacts?channel={channel}",
                data=json.dumps({"custom_fields": {"email": f"bench{i}@example.com"}}),
            )["data"]["id"]
            for i in range(count)
        ]

    def log(self) -> dict[str, Any]:
        """The call log summary."""
        return dict(self.admin("GET", "log"))

    def calls(self, channel: str) -> list[dict[str, Any]]:
        """A channel's accepted calls (``at`` is the machine's monotonic clock)."""
        return list(self.admin("GET", f"calls?channel={channel}")["calls"])

    def stop(self) -> None:
        """Stop the sandbox process."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# -- traffic --------------------------------------------------------------------------------


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """Standard Webhooks headers for ``body``, signed now."""
    msg_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(WebhookSecret.parse(secret), msg_id, timestamp, body),
    }


def every(seconds: float) -> Callable[[], bool]:
    """True on the first call and then at most once every ``seconds``."""
    last = [float("-inf")]

    def due() -> bool:
        now = time.monotonic()
        if now - last[0] >= seconds:
            last[0] = now
            return True
        return False

    return due


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS


class MachineCpu(NamedTuple):
    """The whole machine's CPU time since boot, all CPUs (``/proc/stat``), seconds."""

    busy: float
    """user + nice + system + irq + softirq: every process, the kernel, the database's
    background writers and the load generator included."""
    idle: float
    """idle + iowait."""
    iowait: float
    """The part of ``idle`` with a disk write or read outstanding (a commit's flush)."""
    steal: float
    """Time the hypervisor gave to other guests while this one wanted to run."""

    @classmethod
    def now(cls) -> MachineCpu:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
        return cls(
            (user + nice + system + irq + softirq) / CLOCK_TICKS,
            (idle + iowait) / CLOCK_TICKS,
            iowait / CLOCK_TICKS,
            steal / CLOCK_TICKS,
        )

    def __sub__(self, other: object) -> MachineCpu:
        assert isinstance(other, MachineCpu)
        return MachineCpu(*(mine - theirs for mine, theirs in zip(self, other, strict=True)))

    def share(self, part: float) -> float:
        """``part`` as a percentage of all the CPU time in this span."""
        return round(100 * part / max(self.busy + self.idle + self.steal, 1e-9), 1)


class Database:
    """CPU of the PostgreSQL backends connected to one database (pids read at each call)."""

    def __init__(self, admin_url: str, url: str) -> None:
        self.admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.name = url.rsplit("/", 1)[1]
        self.seen: set[int] = set()

    def backends(self) -> list[int]:
        rows = self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)
        ).fetchall()
        self.seen.update(int(row[0]) for row in rows)
        return sorted(self.seen)

    def events(self) -> int:
        """How many events the ledger holds."""
        with psycopg.connect(self.url, connect_timeout=5) as connection:
            row = connection.execute("SELECT count(*) FROM events").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.admin.close()

"""Dedicated services a scenario may kill: ``redis-server``, a PostgreSQL cluster and a
RabbitMQ node, each started here as a child process on free loopback ports, in a folder of
its own, and killed or restarted by its process id. The machine's shared Redis (6379),
RabbitMQ (5672) and PostgreSQL (5432) are never touched.

Each class raises :class:`Unavailable` when its binaries are not installed, so that a
caller can skip the scenario and say why.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LOOPBACK = "127.0.0.1"


class Unavailable(RuntimeError):
    """A service's binaries are missing, or it would not start here."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> float:
    """Poll ``check`` until it holds; returns the seconds waited, raises after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise Unavailable(f"{what}: not ready within {timeout:g} s")
        time.sleep(step)
    return time.monotonic() - started


def _binary(name: str, *candidates: str) -> str:
    for path in (shutil.which(name), *candidates):
        if path and os.access(path, os.X_OK):
            return path
    raise Unavailable(f"{name} is not installed")


def _stop(process: subprocess.Popen[bytes] | None, sig: int, timeout: float = 30) -> None:
    """Send ``sig`` to a child we started (to its process group when it leads one)."""
    if process is None or process.poll() is not None:
        return
    try:
        if os.getpgid(process.pid) == process.pid:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class DedicatedRedis:
    """``redis-server`` on its own port, no persistence: a restart comes back empty, as a
    Redis without AOF would after a crash (every queued message is gone)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.binary = _binary("redis-server", "/usr/bin/redis-server")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> float:
        """Start and wait for PING; returns the seconds it took."""
        argv = [self.binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", ""]
        argv += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.folder)]
        with (self.folder / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return wait_until(self._pong, 15, f"redis-server on {self.port}")

    def _pong(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise Unavailable(f"redis-server exited {self.process.returncode}")
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save."""
        _stop(self.process, signal.SIGKILL)

    def restart(self) -> float:
        """Start again on the same port (empty); returns the seconds to PING."""
        self.kill()
        self.restarts += 1
        return self.start()

    def close(self) -> None:
        """Stop it for good."""
        _stop(self.process, signal.SIGKILL)


def postgres_bin() -> Path:
    """The folder of the newest installed PostgreSQL server binaries."""

    def version(path: str) -> int:
        name = Path(path).parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise Unavailable("PostgreSQL server binaries (initdb, postgres) are not installed")


class DedicatedPostgres:
    """A throwaway PostgreSQL cluster (``initdb`` into a temporary folder) served by a
    ``postgres`` child process on its own port. PostgreSQL refuses to run as root: when we
    are root, it runs as the ``postgres`` user, in a folder under ``/tmp`` it owns."""

    def __init__(self, port: int | None = None) -> None:
        self.bin = postgres_bin()
        self.port = port or free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="contactsync-chaos-pg-"))
        self.data = self.folder / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable("running as root and there is no postgres user") from None
            self.user = "postgres"
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        self.process: subprocess.Popen[bytes] | None = None
        self.admin_url = f"postgresql://postgres@{LOOPBACK}:{self.port}/postgres"
        self.outages = 0
        with (self.folder / "initdb.log").open("ab") as log:
            done = subprocess.run(
                [
                    *(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust"),
                    *("-U", "postgres", "--no-sync", "-E", "UTF8"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user,
                check=False,
                timeout=120,
            )
        if done.returncode != 0:
            log_text = (self.folder / "initdb.log").read_text(errors="replace")[-2000:]
            raise Unavailable(f"initdb failed ({done.returncode}): {log_text}")

    def start(self) -> float:
        """Serve; returns the seconds until it accepts connections."""
        argv = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-k", str(self.folder), "-c", f"listen_addresses={LOOPBACK}"]
        argv += ["-c", "fsync=off", "-c", "max_connections=300", "-c", "log_min_messages=warning"]
        with (self.folder / "postgres.log").open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, user=self.user, start_new_session=True
            )
        return wait_until(self._ready, 60, f"postgres on {self.port}")

    def _ready(self) -> bool:
        import psycopg

        assert self.process is not None
        if self.process.poll() is not None:
            tail = (self.folder / "postgres.log").read_text(errors="replace")[-2000:]
            raise Unavailable(f"postgres exited {self.process.returncode}: {tail}")
        try:
            with psycopg.connect(self.admin_url, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@{LOOPBACK}:{self.port}/{name}"

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT): every connection cut, no checkpoint; the next start
        runs crash recovery."""
        self.outages += 1
        _stop(self.process, signal.SIGQUIT)

    def shut_down(self) -> None:
        """Fast shutdown (SIGINT): open transactions rolled back, connections closed."""
        self.outages += 1
        _stop(self.process, signal.SIGINT)

    def close(self) -> None:
        """Stop it and delete the cluster."""
        _stop(self.process, signal.SIGINT)
        shutil.rmtree(self.folder, ignore_errors=True)


class DedicatedRabbitMQ:
    """A second RabbitMQ node (``chaos-PID@localhost``) on free AMQP and distribution
    ports, with its own config, plugins (none), Mnesia and log folders and Erlang cookie,
    so that it shares nothing with the machine's node but ``epmd``. Killed with SIGKILL to
    its whole process group; restarted from the same Mnesia folder, as after a crash."""

    def __init__(self, folder: Path) -> None:
        self.script = _binary(
            "rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server"
        )
        real = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        if real.exists():
            self.script = str(real)  # not the Debian wrapper, which switches user and env
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"chaos-{os.getpid()}-{self.port}@localhost"
        self.url = f"amqp://guest:guest@{LOOPBACK}:{self.port}//"
        (folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {LOOPBACK}:{self.port}\n"
            "disk_free_limit.absolute = 50MB\n"
            "vm_memory_high_watermark.relative = 0.3\n"
        )
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "advanced.config").write_text("[].\n")
        (folder / "env.conf").write_text("")
        for sub in ("mnesia", "log", "home"):
            (folder / sub).mkdir(exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def env(self) -> dict[str, str]:
        """The node's environment: nothing of the machine's node's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        folder = self.folder
        env.update(
            HOME=str(folder / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(folder / "log"),
            RABBITMQ_CONFIG_FILE=str(folder / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(folder / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(folder / "env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(folder / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(folder / "rabbitmq.pid"),
            ERL_EPMD_ADDRESS=LOOPBACK,
        )
        return env

    def start(self) -> float:
        """Boot the node; returns the seconds until AMQP answers."""
        with (self.folder / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [self.script],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.folder,
                start_new_session=True,
            )
        return wait_until(self._ready, 90, f"RabbitMQ node {self.node}", step=0.25)

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise Unavailable(f"rabbitmq-server exited {self.process.returncode}: {tail}")
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=2) as conn:
                conn.sendall(b"AMQP\x00\x00\x09\x01")  # the AMQP 0-9-1 protocol header
                return conn.recv(1) == b"\x01"  # a method frame: Connection.Start
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL to the node's process group: a crash, no clean shutdown."""
        _stop(self.process, signal.SIGKILL)

    def restart(self) -> float:
        """Boot again from the same Mnesia folder; returns the seconds until AMQP answers."""
        self.kill()
        self.restarts += 1
        return self.start()

    def close(self) -> None:
        """Stop it for good."""
        _stop(self.process, signal.SIGKILL)

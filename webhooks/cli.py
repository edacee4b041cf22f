"""The ``contactsync`` command: the composition root that wires worker and webhooks.

Every subcommand reads the same ``CONTACTSYNC_*`` settings; the group's options just set
them, so that the processes ``up`` starts inherit them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import click
import requests

from worker.config import ConfigError, Settings
from worker.logs import setup_logging

EXAMPLE_EVENT = {
    "type": "contact.upsert",
    "match": {"email": "ann@example.com"},
    "fields": {"firstName": "Ann", "lastName": "Lee"},
    "tags": ["newsletter", "vip"],
}


def _settings() -> Settings:
    return Settings()


def _fail(message: str) -> None:
    click.echo(f"contactsync: {message}", err=True)
    sys.exit(2)


def _runtime(*, require_secrets: bool = True) -> Any:
    from worker.runtime import Runtime, set_runtime

    settings = _settings()
    try:
        config = settings.load(require_secrets=require_secrets)
    except ConfigError as error:
        _fail(str(error))
    runtime = Runtime(settings, config)
    set_runtime(runtime)
    return runtime


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder for local state.")
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING…")
@click.option("--log-format", type=click.Choice(["text", "json"]), default=None)
def main(
    config: str | None, data_dir: str | None, log_level: str | None, log_format: str | None
) -> None:
    """contactsync: keep a messaging platform's contacts in sync with your CRMs and forms."""
    for name, value in (
        ("CONTACTSYNC_CONFIG", config and str(Path(config).resolve())),
        ("CONTACTSYNC_DATA_DIR", data_dir and str(Path(data_dir).resolve())),
        ("CONTACTSYNC_LOG_LEVEL", log_level),
        ("CONTACTSYNC_LOG_FORMAT", log_format),
    ):
        if value:
            os.environ[name] = value
    settings = _settings()
    setup_logging(settings.log_level, settings.log_format)


@main.command("check-config")
def check_config() -> None:
    """Validate the config file and the environment, and summarise them."""
    from worker.retry import schedule_span_s

    runtime = _runtime()
    config, settings = runtime.config, runtime.settings
    from webhooks.receiver import build_source

    for name, spec in config.sources.items():
        try:
            build_source(name, spec)
        except ValueError as error:
            _fail(str(error))
    click.echo(f"config OK: {settings.config}")
    click.echo(f"  ledger:  {_redact(settings.ledger_url())}")
    click.echo(f"  broker:  {_redact(settings.broker())}")
    for name, channel in config.channels.items():
        limit = channel.rate_limit
        click.echo(
            f"  channel {name}: {channel.platform}, {limit.calls} calls / {limit.period_s:g} s, "
            f"{config.channel_url(name)}"
        )
    for name, source in config.sources.items():
        click.echo(f"  source {name}: {source.kind} -> channel {source.channel or '(per event)'}")
    low, high = schedule_span_s(config.retry)
    click.echo(
        f"  retries: {config.retry.max_attempts} attempts over {low / 60:.0f}-{high / 60:.0f} min"
    )


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


@main.command()
def migrate() -> None:
    """Bring the ledger's schema up to date."""
    from worker.ledger import connect
    from worker.ledger import migrate as run_migrations

    settings = _settings()
    changed = run_migrations(connect(settings.ledger_url()))
    click.echo("ledger migrated" if changed else "ledger already up to date")


WEB_WORKERS_MAX = 8
"""Each web process keeps a ledger connection of its own (and a pool): more processes than
this on a large machine would spend the database's connections before its CPUs."""


WEB_WORKER_CLASS = "webhooks.server.LingeringThreadWorker"
"""gunicorn's gthread, serving a prompt kept-alive connection's next request in the thread
that answered its last (webhooks/server.py)."""


def default_web_workers() -> int:
    """Two gunicorn processes per CPU this process may run on (at least 2, at most
    :data:`WEB_WORKERS_MAX`). A process writes one group of events at a time and its
    requests wait on that commit, so one process per CPU leaves CPUs idle under load; the
    ingest benchmark on 2 CPUs (docs/benchmarks.md) accepted more with 4 than with 2."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(2, min(WEB_WORKERS_MAX, 2 * cpus))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    type=int,
    help="gunicorn processes [default: 2 per CPU, at least 2, at most 8].",
)
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=int,
    help="Threads per process: a request waits on the ledger's commit, so more than CPUs.",
)
def web(host: str, port: int, workers: int | None, threads: int) -> None:
    """Run the webhook receiver under gunicorn."""
    from gunicorn.app.base import BaseApplication

    if workers is None:
        workers = default_web_workers()

    _metrics_folder(_settings())
    runtime = _runtime()
    runtime.ledger  # noqa: B018 - migrate before the workers fork

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", WEB_WORKER_CLASS)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("timeout", 30)
            self.cfg.set("control_socket_disable", True)  # no shared socket under $HOME

        def load(self) -> Any:
            from webhooks.app import create_app
            from worker.runtime import get_runtime

            return create_app(get_runtime())

    Server().run()


@main.command()
@click.option(
    "--concurrency",
    "-c",
    default=16,
    show_default=True,
    type=int,
    help="Threads: most wait for a rate-limit start, so many are cheap.",
)
@click.option(
    "--pool",
    default="threads",
    show_default=True,
    type=click.Choice(["threads", "prefork", "solo"]),
)
def worker(concurrency: int, pool: str) -> None:
    """Run a Celery worker that applies commands (every channel's queue)."""
    from worker.submit import queue_for

    _metrics_folder(_settings())
    runtime = _runtime()
    runtime.ledger  # noqa: B018 - migrate before taking work
    argv = [
        "worker",
        "--loglevel",
        runtime.settings.log_level,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--queues",
        ",".join(["contactsync", *map(queue_for, runtime.config.channels)]),
        "--hostname",
        f"contactsync-{os.getpid()}@{socket.gethostname()}",
    ]
    runtime.celery.worker_main(argv)


@main.command()
def relay() -> None:
    """Publish recorded commands from the ledger's outbox (every worker runs a relay too)."""
    import signal

    from worker.relay import Relay

    runtime = _runtime()
    runtime.ledger  # noqa: B018 - migrate before relaying
    relay = Relay(runtime)
    signal.signal(signal.SIGTERM, lambda *_: relay.stop(timeout_s=0))
    click.echo(f"relay: every {relay.every_s} s, batches of {relay.batch}; Ctrl-C stops it")
    with contextlib.suppress(KeyboardInterrupt):
        relay.run()
    click.echo(f"relay: {relay.published} published")


@main.command()
def beat() -> None:
    """Run Celery beat, which schedules the reconciler."""
    runtime = _runtime()
    runtime.ledger  # noqa: B018 - migrate before scheduling
    runtime.celery.start(["beat", "--loglevel", runtime.settings.log_level])


@main.command()
@click.option("--source", required=True, help="The source (in the config) to sign for.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.argument("event_file", required=False, type=click.File("rb"))
def send(source: str, url: str, event_file: Any) -> None:
    """Sign an event (a JSON file, or a built-in example) and send it to a receiver."""
    from webhooks.signing import WebhookSecret, sign

    config = _runtime(require_secrets=False).config
    spec = config.sources.get(source)
    if spec is None or spec.secret is None:
        _fail(f"no source {source!r} with a secret in the config")
        return
    body = (
        event_file.read()
        if event_file
        else json.dumps({"id": f"evt-{uuid.uuid4().hex[:12]}", **EXAMPLE_EVENT}).encode()
    )
    msg_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time())
    secret = WebhookSecret.parse(spec.secret.get_secret_value())
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }
    target = f"{url.rstrip('/')}/webhooks/{source}"
    try:
        response = requests.post(target, data=body, headers=headers, timeout=10)
    except requests.RequestException as error:
        _fail(f"could not reach {target}: {type(error).__name__}")
        return
    click.echo(f"{response.status_code} {response.text.strip()}")
    sys.exit(0 if response.ok else 1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=18080, show_default=True, type=int)
@click.option("--rate", default=None, help="Override every channel's limit, e.g. 20/6.")
@click.option("--no-retry-after", is_flag=True, help="Answer 429 without Retry-After.")
@click.option("--latency-ms", default=0.0, type=float, help="Added to every answer.")
@click.option("--error-rate", default=0.0, type=float, help="Share of calls answered 5xx.")
@click.option("--rate-limit-rate", default=0.0, type=float, help="Share of forced 429s.")
def sandbox(
    host: str,
    port: int,
    rate: str | None,
    no_retry_after: bool,
    latency_ms: float,
    error_rate: float,
    rate_limit_rate: float,
) -> None:
    """Serve the Contacts API sandbox (the channels of --config, else demo channels)."""
    from worker.contacts_api.sandbox import Faults, SandboxConfig, parse_rate, serve

    settings = _settings()
    try:
        faults = Faults().updated(
            {
                "retry_after": not no_retry_after,
                "latency_ms": latency_ms,
                "error_rate": error_rate,
                "rate_limit_rate": rate_limit_rate,
            }
        )
        options: dict[str, Any] = {"faults": faults}
        if rate:
            options["rate_limit"] = parse_rate(rate)
        if settings.config is not None:
            config = SandboxConfig.from_app_config(settings.load(), **options)
        else:
            config = SandboxConfig.demo(**options)
    except (ConfigError, ValueError) as error:
        _fail(str(error))
        return
    serve(host, port, config)


@main.command()
@click.option(
    "--sandbox",
    "with_sandbox",
    is_flag=True,
    help="Also run the sandbox and point every channel at it (no token needed).",
)
@click.option("--port", default=8000, show_default=True, type=int, help="Receiver port.")
@click.option("--sandbox-port", default=18080, show_default=True, type=int)
@click.option("--concurrency", default=4, show_default=True, type=int, help="Worker threads.")
def up(with_sandbox: bool, port: int, sandbox_port: int, concurrency: int) -> None:
    """Run the receiver, a worker and the reconciler (and the sandbox) on this machine."""
    from webhooks.supervisor import Child, child_env, cli_argv, supervise
    from worker.ledger import connect
    from worker.ledger import migrate as run_migrations

    settings = _settings()
    if settings.config is None:
        _fail("no config file: pass --config or set CONTACTSYNC_CONFIG")
        return
    extra = {"CONTACTSYNC_DATA_DIR": str(settings.data_dir.resolve())}
    if with_sandbox:
        extra.update(_sandbox_tokens(settings))
        extra["CONTACTSYNC_API_BASE_URL"] = f"http://127.0.0.1:{sandbox_port}/api/v1"
    os.environ.update(extra)
    settings = _settings()
    try:
        config = settings.load()
    except ConfigError as error:
        _fail(str(error))
        return
    run_migrations(connect(settings.ledger_url()))
    _metrics_folder(settings, clean=True)  # the children add up their metrics there
    children = []
    if with_sandbox:
        children.append(Child("sandbox", cli_argv("sandbox", "--port", str(sandbox_port))))
    children += [
        Child("web", cli_argv("web", "--port", str(port), "--workers", "1")),
        Child("worker", cli_argv("worker", "--concurrency", str(concurrency))),
        Child("beat", cli_argv("beat")),
    ]
    receiver = f"http://127.0.0.1:{port}"
    source = next(iter(config.sources), "SOURCE")

    def is_ready() -> bool:
        try:
            return requests.get(f"{receiver}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def announce() -> None:
        # The path this was started by (.venv/bin/contactsync under make), so it can be pasted.
        me = sys.argv[0] if Path(sys.argv[0]).name == "contactsync" else "contactsync"
        click.echo(f"\ncontactsync is up: receiver {receiver}  (data in {settings.data_dir})")
        click.echo("Send a first signed event:")
        click.echo(f"  {me} --config {settings.config} send --source {source} examples/event.json")
        if with_sandbox:
            click.echo("See the contact in the sandbox:")
            click.echo(
                f"  curl 'http://127.0.0.1:{sandbox_port}/_sandbox/contacts?channel="
                f"{next(iter(config.channels), 'main')}'"
            )
        click.echo("Ctrl-C stops everything; nothing accepted is lost.\n")

    sys.exit(supervise(children, child_env(extra), ready=is_ready, on_ready=announce))


def _metrics_folder(settings: Settings, *, clean: bool = False) -> None:
    """Where this machine's processes add up their metrics (worker/metrics.py): set before
    prometheus_client is first imported, and inherited by the processes ``up`` starts."""
    default = str(settings.data_dir.resolve() / "metrics")
    folder = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", default))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db") if clean else ():  # prometheus_client's files only
        stale.unlink(missing_ok=True)


def _sandbox_tokens(settings: Settings) -> dict[str, str]:
    """Made-up tokens for channels whose token variable is unset: the sandbox and the
    workers read the same variables, so they agree."""
    import yaml

    from worker.config import parse_config

    assert settings.config is not None
    try:
        text = Path(settings.config).read_text(encoding="utf-8")
        config = parse_config(yaml.safe_load(text), origin=str(settings.config))
    except (OSError, yaml.YAMLError, ConfigError) as error:
        _fail(str(error))
        return {}
    return {
        channel.token_env: f"sandbox-{name}-token"
        for name, channel in config.channels.items()
        if channel.token_env and not os.environ.get(channel.token_env)
    }


from webhooks.cli_dlq import dlq  # noqa: E402

main.add_command(dlq)

from webhooks.cli_ops import import_command, status  # noqa: E402

main.add_command(import_command)
main.add_command(status)


if __name__ == "__main__":
    main()

"""The production shape (docker-compose.yml, ops/): services, start order, health checks,
commands that exist, metrics that Prometheus and the Grafana dashboard can find.

No Docker engine runs here: images are not built and containers not started. What can be
checked without one is: the files parse, ``docker-compose config`` accepts them (when
docker-compose is installed; CI must have it), and they agree with the code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from services import unavailable
from stack import ROOT, write_config

from webhooks.cli import main
from webhooks.metrics import scrape_registry
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.runtime import Runtime

COMPOSE = ROOT / "docker-compose.yml"
SANDBOX_OVERRIDE = ROOT / "ops" / "compose" / "sandbox.yml"
PROMETHEUS = ROOT / "ops" / "prometheus.yml"
DASHBOARD = ROOT / "ops" / "grafana" / "contactsync.json"
GRAFANA = ROOT / "ops" / "grafana" / "provisioning"

ONE_SHOT = {"migrate"}
CONTACTSYNC_SERVICES = {"migrate", "receiver", "worker", "beat", "sandbox"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(load(COMPOSE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    return {str(k): str(v) for k, v in env.items()}


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_production_services_are_all_there(services: dict[str, Any]) -> None:
    assert set(services) == {
        "redis",
        "postgres",
        "migrate",
        "receiver",
        "worker",
        "beat",
        "flower",
        "prometheus",
        "grafana",
        "sandbox",
    }


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
    receiver = services["receiver"]["healthcheck"]["test"]
    assert any("/readyz" in part for part in receiver)
    worker = "\n".join(services["worker"]["healthcheck"]["test"])
    assert "control.ping" in worker and "socket.gethostname()" in worker
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert any("/-/ready" in part for part in services["prometheus"]["healthcheck"]["test"])


def test_contactsync_services_run_real_subcommands_with_real_options(
    services: dict[str, Any],
) -> None:
    for name in CONTACTSYNC_SERVICES:
        service = services[name]
        assert str(service["image"]).startswith("contactsync:"), name
        assert "entrypoint" not in service, f"{name} must run the image's `contactsync`"
        subcommand, *args = service["command"]
        assert subcommand in main.commands, f"{name}: no `contactsync {subcommand}`"
        # Parsing the arguments as the CLI would: an unknown option fails here.
        main.commands[subcommand].make_context(subcommand, list(args))
    flower = services["flower"]
    assert flower["entrypoint"] == ["celery"] and "flower" in flower["command"]
    assert flower["image"] == services["worker"]["image"]  # Flower is installed in the image


def test_the_ledger_is_migrated_before_anything_uses_it(services: dict[str, Any]) -> None:
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("receiver", "worker", "beat"):
        after = services[name]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully", name
        assert after["postgres"]["condition"] == "service_healthy", name
        assert after["redis"]["condition"] == "service_healthy", name


def test_production_settings_point_at_postgres_and_redis(services: dict[str, Any]) -> None:
    for name in ("migrate", "receiver", "worker", "beat"):
        env = environment(services[name])
        assert env["CONTACTSYNC_DATABASE_URL"].startswith("postgresql://"), name
        assert env["CONTACTSYNC_BROKER_URL"] == "redis://redis:6379/0", name
        assert env["CONTACTSYNC_CONFIG"] == "/etc/contactsync/contactsync.yaml", name
        mounts = [str(volume).rsplit(":", 2)[1] for volume in services[name]["volumes"]]
        assert "/etc/contactsync/contactsync.yaml" in mounts, name
    assert "--broker=redis://redis:6379/0" in services["flower"]["command"]
    for name, volume in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data")):
        assert any(str(v).endswith(f":{volume}") for v in services[name]["volumes"]), name


def test_workers_scale_and_beat_is_exactly_one(services: dict[str, Any]) -> None:
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert "ports" not in services["worker"], "replicas cannot share a host port"
    assert "container_name" not in services["worker"]
    assert services["beat"]["deploy"]["replicas"] == 1


def test_metrics_reach_prometheus(services: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in load(PROMETHEUS)["scrape_configs"]}
    receiver, worker = jobs["contactsync-receiver"], jobs["contactsync-worker"]
    assert receiver["metrics_path"] == "/metrics"
    (receiver_sd,) = receiver["dns_sd_configs"]
    assert receiver_sd["names"] == ["receiver"]
    assert receiver_sd["port"] == int(option(services["receiver"]["command"], "--port"))
    (worker_sd,) = worker["dns_sd_configs"]
    assert worker_sd["names"] == ["worker"]
    assert worker_sd["port"] == int(environment(services["worker"])["CONTACTSYNC_METRICS_PORT"])
    for name in ("receiver", "worker"):
        folder = environment(services[name])["PROMETHEUS_MULTIPROC_DIR"]
        assert folder in services[name]["tmpfs"], f"{name}: metrics folder not fresh at start"
    prometheus = services["prometheus"]
    assert "./ops/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]


def test_the_sandbox_is_a_profile_and_the_override_points_every_channel_at_it(
    services: dict[str, Any],
) -> None:
    sandbox = services["sandbox"]
    assert sandbox["profiles"] == ["sandbox"]
    port = option(sandbox["command"], "--port")
    override = load(SANDBOX_OVERRIDE)["services"]
    assert set(override) <= set(services)
    for name in ("receiver", "worker", "beat", "sandbox"):
        env = environment(override[name])
        assert env["CONTACTSYNC_API_BASE_URL"] == f"http://sandbox:{port}/api/v1", name
        assert env["MAIN_CHANNEL_TOKEN"], name  # the example config's token variable
    assert override["worker"]["depends_on"]["sandbox"]["condition"] == "service_healthy"


def test_the_dockerfile_runs_contactsync_as_a_user(services: dict[str, Any]) -> None:
    build = services["receiver"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    stages = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert stages and all(stage == "python:3.11-slim" for stage in stages)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["contactsync"]' in dockerfile
    assert re.search(r"pip install [^\n]*flower", dockerfile)


# -- docker-compose itself ---------------------------------------------------------------


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        unavailable("docker-compose", FileNotFoundError("apt-get install -y docker-compose"))
    assert found is not None
    return found


@pytest.mark.parametrize(
    "arguments",
    [
        ["-f", "docker-compose.yml"],
        ["-f", "docker-compose.yml", "--profile", "grafana"],
        ["-f", "docker-compose.yml", "-f", "ops/compose/sandbox.yml", "--profile", "sandbox"],
    ],
    ids=["default", "grafana", "sandbox"],
)
def test_docker_compose_accepts_the_files(arguments: list[str]) -> None:
    done = subprocess.run(
        [docker_compose(), *arguments, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# -- Grafana ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_has_the_panels_operators_need(dashboard: dict[str, Any]) -> None:
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "API calls per minute vs limit",
        "429 answers per minute",
        "Backlog by channel",
        "Age of the oldest open command",
        "Dead letters in the ledger",
        "New dead letters by reason (1 h)",
        "Events per minute by outcome",
    } <= titles
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "contactsync"
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert variables == {"datasource", "channel"}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_dashboard_asks_only_for_series_that_exist(
    dashboard: dict[str, Any], tmp_path: Path, sandbox: SandboxServer
) -> None:
    config = write_config(tmp_path / "contactsync.yaml", sandbox)
    runtime = Runtime(Settings(config=config, data_dir=tmp_path / "data"), load_config(config))
    served: set[str] = set()
    try:
        for family in scrape_registry(runtime).collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
            served.update(family.name + s for s in suffixes.get(family.type, [""]))
    finally:
        runtime.ledger.engine.dispose()
    asked = {
        name for expr in expressions(dashboard) for name in re.findall(r"contactsync_\w+", expr)
    }
    assert asked, "no contactsync series in the dashboard"
    assert asked <= served, f"not served: {sorted(asked - served)}"


def test_grafana_provisioning_matches_the_compose_mounts(
    services: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    (source,) = load(GRAFANA / "datasources" / "prometheus.yml")["datasources"]
    default = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert source["uid"] == default["current"]["value"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = load(GRAFANA / "dashboards" / "contactsync.yml")["providers"]
    mounts = dict(str(v).rsplit(":", 2)[:2] for v in services["grafana"]["volumes"][:2])
    assert mounts["./ops/grafana/contactsync.json"].startswith(provider["options"]["path"] + "/")
    assert mounts["./ops/grafana/provisioning"] == "/etc/grafana/provisioning"


def test_promtool_accepts_the_prometheus_config_and_the_dashboard_queries(
    dashboard: dict[str, Any], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # Debian's `prometheus` package has it; .ci/run installs it
        unavailable("promtool", FileNotFoundError("apt-get install -y prometheus"))
    checked = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(PROMETHEUS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = [
        {"record": f"dashboard:query{index}", "expr": expr}
        for index, expr in enumerate(
            e.replace("$__rate_interval", "5m").replace("$channel", ".*")
            for e in expressions(dashboard)
        )
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

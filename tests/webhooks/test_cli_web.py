"""contactsync web's process count when none is given, and its worker class."""

from __future__ import annotations

import pytest
from gunicorn.util import load_class

from webhooks.cli import WEB_WORKER_CLASS, WEB_WORKERS_MAX, default_web_workers
from webhooks.server import LingeringThreadWorker


@pytest.mark.parametrize(("cpus", "workers"), [(1, 2), (2, 4), (3, 6), (4, 8), (64, 8)])
def test_two_processes_per_usable_cpu_within_bounds(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cpus)))
    monkeypatch.setattr("os.cpu_count", lambda: 128)  # the affinity, not the machine, counts
    assert default_web_workers() == workers
    assert 2 <= default_web_workers() <= WEB_WORKERS_MAX


def test_without_affinity_the_cpu_count_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr("os.sched_getaffinity")
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    assert default_web_workers() == 6
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert default_web_workers() == 2


def test_the_worker_class_is_the_lingering_gthread() -> None:
    assert load_class(WEB_WORKER_CLASS) is LingeringThreadWorker

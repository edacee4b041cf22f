"""The one place the Celery app is built.

The broker comes from ``CONTACTSYNC_BROKER_URL`` (``redis://``, ``amqp://``), else an
embedded one that needs no server: kombu's filesystem transport in the data folder, which
every process of ``contactsync up`` shares. Whatever the broker, the ledger is the record:
a message lost on the way is republished by the reconciler.

Tasks are acknowledged late with a prefetch of one, so a worker that dies mid-command
leaves its message to be delivered again, and no worker hoards messages another could run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from worker import embedded_broker
from worker.config import Settings

TASK_FOR_KIND = {
    "upsert": "contactsync.upsert_contact",
    "tag": "contactsync.tag_contact",
    "untag": "contactsync.untag_contact",
}
RECONCILE_TASK = "contactsync.reconcile"


def embedded_broker_options(data_dir: Path) -> dict[str, Any]:
    """Transport options for the embedded (filesystem) broker under ``data_dir``."""
    folder = (data_dir / "broker").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "control_folder": str(folder / "control"),
        "store_processed": False,
        "polling_interval": 0.2,
    }


def create_celery(settings: Settings, *, reconcile_every_s: float = 5.0) -> Celery:
    """Build the Celery app for these settings, with the tasks registered."""
    embedded_broker.register()
    app = Celery("contactsync", broker=settings.broker(), set_as_current=True)
    conf: dict[str, Any] = {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": "contactsync",
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3.0,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": {
            "reconcile": {"task": RECONCILE_TASK, "schedule": reconcile_every_s},
        },
        # The only schedule is the reconciler's interval: nothing worth a file on disk.
        "beat_scheduler": "celery.beat:Scheduler",
        "timezone": "UTC",
    }
    if settings.broker().startswith(("filesystem://", f"{embedded_broker.SCHEME}://")):
        conf["broker_transport_options"] = embedded_broker_options(settings.data_dir)
        conf["worker_enable_remote_control"] = False
    elif settings.broker().startswith("redis"):
        conf["broker_transport_options"] = {"visibility_timeout": 3600}
    app.conf.update(conf)
    # Importing the modules registers the tasks on the current app, and the relay that
    # starts with each worker.
    import worker.relay
    import worker.tasks  # noqa: F401

    return app

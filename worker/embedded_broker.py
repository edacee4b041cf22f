"""The embedded broker: kombu's filesystem transport, made safe for several processes.

kombu's transport creates a message file and then writes it, and its reader takes files
without the writer's lock: a reader can take a file still empty, and the JSON error stops
the worker (kombu issue #1551). Here a message is written under a temporary name and
renamed into place (atomic on one filesystem), and a file that cannot be read as a message
is skipped with a warning instead of stopping the worker: the ledger still holds the
command, and the reconciler publishes it again.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps as _kombu_dumps

log = logging.getLogger(__name__)

SCHEME = "contactsync-fs"


def dumps(payload: Any) -> str:
    """kombu's JSON encoding of a message."""
    return str(_kombu_dumps(payload))  # type: ignore[no-untyped-call]


class Channel(filesystem.Channel):
    """Atomic writes, tolerant reads."""

    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.part"  # does not end in .msg: readers pass it by
        with open(partial, "wb") as handle:
            handle.write(dumps(payload).encode("utf-8"))  # kombu's encoder: dates, uuids…
        os.replace(partial, final)

    def _get(self, queue: Any) -> Any:  # type: ignore[override]
        while True:
            try:
                return super()._get(queue)  # type: ignore[no-untyped-call]
            except (ValueError, json.JSONDecodeError) as error:
                log.warning("skipped an unreadable message file: %s", type(error).__name__)


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel

    @property
    def default_connection_params(self) -> dict[str, Any]:
        """No default host: there is none to connect to (kombu's virtual transports name
        ``localhost``, and kombu then warns "No hostname was supplied" each time it copies
        a connection whose URL has none, as ``contactsync-fs://`` does: at every publish)."""
        return {"port": self.default_port}


def register() -> None:
    """Make ``contactsync-fs://`` a broker URL kombu knows."""
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")

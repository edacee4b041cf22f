"""The ledger: the durable record of every accepted event and every command.

The broker is the fast path; the ledger is the record. A command's state lives here
(pending → running → done, or scheduled / dead), so nothing accepted depends on a message
surviving the broker. See ``docs/architecture.md``.
"""

from worker.ledger.db import connect, migrate
from worker.ledger.errors import LedgerUnavailable, UnstorableValue
from worker.ledger.schema import CommandState
from worker.ledger.store import Claimed, Ledger, Recorded

__all__ = [
    "Claimed",
    "CommandState",
    "Ledger",
    "LedgerUnavailable",
    "Recorded",
    "UnstorableValue",
    "connect",
    "migrate",
]
